-- The gateways' journal events (alarms, OPC UA events, rule events, the
-- gateways' own warnings), each (gateway, seq) once; the newest 10 000 per
-- gateway are kept.
CREATE TABLE events (
    gateway  text   NOT NULL,
    seq      bigint NOT NULL,
    ts_ms    bigint NOT NULL,
    body     jsonb  NOT NULL,
    PRIMARY KEY (gateway, seq)
);
