//! The enums whose names strum derives also carry serde names (`rename_all`): the two must spell
//! every variant alike, since the API's JSON, the topology file, the database and the metrics
//! labels each read one of them.

use std::{fmt::Debug, str::FromStr};

use serde::{Serialize, de::DeserializeOwned};
use strum::IntoEnumIterator;

use crate::{
    roles::{Role, Roles},
    settings::Scope,
    store::{
        failed_messages::{PayloadEncoding, Status},
        replays::ReplayStatus,
    },
    topology::{ExchangeKind, Overflow, QueueType},
    workers::stats::Source,
};

/// Serde's name of each variant is strum's (`name`).
fn serde_spells_like_strum<T: IntoEnumIterator + Serialize + Debug + Copy>(name: impl Fn(T) -> String) {
    for variant in T::iter() {
        assert_eq!(serde_json::to_value(variant).unwrap(), name(variant), "{variant:?}");
    }
}

/// Strum parses back the name it gives, and serde reads it too.
fn names_read_back<T>(name: impl Fn(T) -> String)
where
    T: IntoEnumIterator + DeserializeOwned + FromStr + PartialEq + Debug + Copy,
{
    for variant in T::iter() {
        assert_eq!(name(variant).parse::<T>().ok(), Some(variant));
        assert_eq!(serde_json::from_value::<T>(name(variant).into()).unwrap(), variant);
    }
}

#[test]
fn serde_and_strum_spell_every_variant_alike() {
    serde_spells_like_strum(|s: Status| s.as_str().into());
    serde_spells_like_strum(|e: PayloadEncoding| e.as_str().into());
    serde_spells_like_strum(|s: Source| s.as_str().into());
    serde_spells_like_strum(|k: ExchangeKind| k.as_str().into());
    serde_spells_like_strum(|t: QueueType| t.as_str().into());
    serde_spells_like_strum(|o: Overflow| o.as_str().into());
    serde_spells_like_strum(|s: Scope| s.to_string());
    names_read_back(|s: Status| s.as_str().into());
    names_read_back(|k: ExchangeKind| k.as_str().into());
    serde_spells_like_strum(|s: ReplayStatus| s.as_str().into());
    names_read_back(|s: ReplayStatus| s.as_str().into());
}

/// Every variant's name, in declaration order, comma-separated.
fn all<T: IntoEnumIterator>(name: impl Fn(T) -> &'static str) -> String {
    T::iter().map(name).collect::<Vec<_>>().join(",")
}

#[test]
fn the_names_are_the_ones_the_contract_uses() {
    assert_eq!(Roles::all().to_string(), "applier,api,ingester,retrier,stats,scheduler");
    assert_eq!(all(Status::as_str), "pending,retrying,failed,resolved");
    assert_eq!(all(PayloadEncoding::as_str), "json,text,base64");
    assert_eq!(all(Source::as_str), "management_api,passive_declare,unavailable");
    assert_eq!(all(ExchangeKind::as_str), "direct,topic,fanout,headers");
    assert_eq!(all(QueueType::as_str), "classic,quorum");
    assert_eq!(all(Overflow::as_str), "drop-head,reject-publish,reject-publish-dlx");
    // The ENUM of the replays table.
    assert_eq!(all(ReplayStatus::as_str), "queued,running,completed,cancelled,failed");
    assert_eq!(Role::Api.to_string(), "api");
    assert_eq!(Scope::Operate.to_string(), "operate");
}
