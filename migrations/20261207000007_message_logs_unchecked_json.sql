-- MariaDB's JSON is LONGTEXT plus a json_valid() CHECK that parses every payload on insert: the
-- service writes only JSON it serialized itself, so on MariaDB the columns become plain LONGTEXT
-- (still JSON text: JSON_EXTRACT reads them alike). MySQL 8 reads only the COMMENT (its JSON is
-- a real type, left as it is); the /*M! ... */ part is run by MariaDB alone.
ALTER TABLE message_logs COMMENT = 'Audit trail of published messages (payload and metadata: JSON text)'
    /*M! , MODIFY payload LONGTEXT NOT NULL, MODIFY metadata LONGTEXT NULL */;
