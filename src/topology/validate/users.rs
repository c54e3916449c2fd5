//! `[[users]]`: broker users, their password source, vhost permissions and topic permissions.
//!
//! A permission regex must compile and, unless it is `""` (no permission), match the name of at
//! least one exchange or queue of this topology: a regex that matches nothing is a typo that the
//! broker would accept silently and the service would only find out as ACCESS_REFUSED.
//! RabbitMQ matches with Erlang's PCRE, unanchored; the `regex` engine used here agrees on
//! everything a permission needs (anchors, classes, alternation, repetition) and refuses
//! look-around and back-references, which a permission has no use for.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use regex_automata::meta::Regex;

use super::{ExchangeInfo, Validator};
use crate::topology::model::*;

/// What a permission regex is matched against: every exchange and queue name of the file,
/// dead-letter queues included.
pub(super) struct EntityNames<'a> {
    pub names: Vec<&'a str>,
}

impl<'a> Validator<'a> {
    /// Every `[[users]]` entry in file order; `None` for one with an error.
    pub(super) fn check_users(&mut self, entities: &EntityNames<'_>) -> Vec<Option<User>> {
        let file = self.file;
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut resolved = Vec::with_capacity(file.users.len());
        for (i, spec) in file.users.iter().enumerate() {
            let errors_before = self.errors.len();
            self.check_user_name(i, spec, &mut first_seen);
            let password = self.check_password_source(i, spec);
            for (k, tag) in spec.tags.iter().enumerate() {
                if tag.trim().is_empty() || tag.contains(',') {
                    self.error(
                        format!("users[{i}].tags[{k}]"),
                        format!("`{tag}` must be one non-empty tag without `,`"),
                    );
                }
            }
            for (field, regex) in [
                ("configure", &spec.configure),
                ("write", &spec.write),
                ("read", &spec.read),
            ] {
                self.check_permission(&format!("users[{i}].{field}"), regex, entities);
            }
            let topic_permissions = self.check_topic_permissions(i, spec);
            resolved.push(match password {
                Some(password) if self.errors.len() == errors_before => Some(User {
                    name: spec.name.clone(),
                    password,
                    tags: spec.tags.clone(),
                    permissions: Permissions {
                        configure: spec.configure.clone(),
                        write: spec.write.clone(),
                        read: spec.read.clone(),
                    },
                    topic_permissions,
                }),
                _ => None,
            });
        }
        resolved
    }

    fn check_user_name(&mut self, i: usize, spec: &'a UserSpec, first_seen: &mut HashMap<&'a str, usize>) {
        let path = format!("users[{i}].name");
        if spec.name.trim().is_empty() {
            self.error(path, "must not be empty");
        } else if let Some(first) = first_seen.get(spec.name.as_str()) {
            self.error(
                path,
                format!("duplicate user `{}` (first declared at users[{first}])", spec.name),
            );
        } else {
            first_seen.insert(&spec.name, i);
        }
    }

    /// Exactly one source, each well-formed; the algorithm only with a hash.
    fn check_password_source(&mut self, i: usize, spec: &UserSpec) -> Option<PasswordSource> {
        let at = |field: &str| format!("users[{i}].{field}");
        let set: Vec<&str> = [
            ("password_env", spec.password_env.is_some()),
            ("password_file", spec.password_file.is_some()),
            ("password_hash", spec.password_hash.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, is_set)| is_set.then_some(name))
        .collect();
        if set.len() != 1 {
            let found = if set.is_empty() {
                "none is set".to_owned()
            } else {
                format!("{} are set", set.join(" and "))
            };
            self.error(
                format!("users[{i}]"),
                format!("set exactly one of password_env, password_file or password_hash ({found}); the password itself never goes in this file"),
            );
        }
        if spec.hashing_algorithm.is_some() && spec.password_hash.is_none() {
            self.error(at("hashing_algorithm"), "only applies with password_hash");
        }
        let mut source = None;
        if let Some(var) = &spec.password_env {
            if is_env_name(var) {
                source = Some(PasswordSource::Env(var.clone()));
            } else {
                self.error(
                    at("password_env"),
                    format!("`{var}` is not an environment variable name (ASCII letters, digits, `_`, not starting with a digit)"),
                );
            }
        }
        if let Some(path) = &spec.password_file {
            if path.trim().is_empty() {
                self.error(at("password_file"), "must not be empty");
            } else {
                source = Some(PasswordSource::File(path.clone()));
            }
        }
        if let Some(hash) = &spec.password_hash {
            let algorithm = self.check_hashing_algorithm(i, spec);
            if base64::engine::general_purpose::STANDARD
                .decode(hash)
                .map_or(true, |bytes| bytes.len() <= 4)
            {
                self.error(
                    at("password_hash"),
                    "is not a RabbitMQ password hash (base64 of a 4-byte salt and the digest, as `rabbitmqctl hash_password` prints it)",
                );
            } else if let Some(algorithm) = algorithm {
                source = Some(PasswordSource::Hash {
                    hash: hash.clone(),
                    algorithm,
                });
            }
        }
        source.filter(|_| set.len() == 1)
    }

    fn check_hashing_algorithm(&mut self, i: usize, spec: &UserSpec) -> Option<String> {
        let Some(algorithm) = spec.hashing_algorithm.as_deref() else {
            return Some(HASHING_ALGORITHMS[0].to_owned());
        };
        if HASHING_ALGORITHMS.contains(&algorithm) {
            return Some(algorithm.to_owned());
        }
        self.error(
            format!("users[{i}].hashing_algorithm"),
            format!(
                "unknown algorithm `{algorithm}` (expected {})",
                HASHING_ALGORITHMS.join(", ")
            ),
        );
        None
    }

    /// A vhost permission: `""` grants nothing; otherwise it compiles and names something of ours.
    fn check_permission(&mut self, path: &str, regex: &str, entities: &EntityNames<'_>) {
        if regex.is_empty() {
            return;
        }
        let Some(compiled) = self.compile(path, regex) else {
            return;
        };
        if !entities.names.iter().any(|name| compiled.is_match(name)) {
            self.error(
                path,
                format!("`{regex}` matches no exchange or queue of this topology (`\"\"` grants nothing)"),
            );
        }
    }

    /// One per exchange, each on a declared topic exchange (the broker checks no other type).
    fn check_topic_permissions(&mut self, i: usize, spec: &UserSpec) -> Vec<TopicPermission> {
        let mut by_exchange: BTreeMap<&str, (usize, TopicPermission)> = BTreeMap::new();
        for (k, topic) in spec.topic_permissions.iter().enumerate() {
            let at = |field: &str| format!("users[{i}].topic_permissions[{k}].{field}");
            match self.exchanges.get(topic.exchange.as_str()) {
                None => self.error(
                    at("exchange"),
                    format!("exchange `{}` is not declared in [[exchanges]]", topic.exchange),
                ),
                Some(ExchangeInfo { kind: Some(kind), .. }) if *kind != ExchangeKind::Topic => self.error(
                    at("exchange"),
                    format!(
                        "`{}` is a {} exchange; RabbitMQ checks topic permissions on topic exchanges only",
                        topic.exchange,
                        kind.as_str()
                    ),
                ),
                Some(_) => {}
            }
            for (field, regex) in [("write", &topic.write), ("read", &topic.read)] {
                if regex.is_empty() {
                    self.error(
                        at(field),
                        "must not be empty: write `^$` to allow no routing key, `.*` to allow any",
                    );
                } else {
                    self.compile(&at(field), regex);
                }
            }
            if let Some((first, _)) = by_exchange.get(topic.exchange.as_str()) {
                self.error(
                    at("exchange"),
                    format!(
                        "duplicate topic permission on `{}` (first at users[{i}].topic_permissions[{first}])",
                        topic.exchange
                    ),
                );
            } else {
                let resolved = TopicPermission {
                    exchange: topic.exchange.clone(),
                    write: topic.write.clone(),
                    read: topic.read.clone(),
                };
                by_exchange.insert(&topic.exchange, (k, resolved));
            }
        }
        by_exchange.into_values().map(|(_, topic)| topic).collect()
    }

    /// The regex, or its error (first line, which names the problem) reported at `path`.
    fn compile(&mut self, path: &str, regex: &str) -> Option<Regex> {
        match Regex::new(regex) {
            Ok(compiled) => Some(compiled),
            Err(err) => {
                let reason = regex_error(&err);
                self.error(path, format!("`{regex}` is not a valid regex: {reason}"));
                None
            }
        }
    }
}

/// The syntax error's own message (`unclosed group`), without the lines that draw the pattern.
fn regex_error(err: &regex_automata::meta::BuildError) -> String {
    let text = match err.syntax_error() {
        Some(syntax) => syntax.to_string(),
        None => err.to_string(),
    };
    let last = text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default();
    last.trim().trim_start_matches("error: ").to_owned()
}

/// `RABBITMQ_PASSWORD_ORDERS`: what a shell and Kubernetes accept as a variable name.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
