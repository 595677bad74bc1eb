-- ferrite-cloud's fleet store, version 1. Run by refinery at start, under
-- an advisory lock, so replicas starting together run it once.

-- Gateways: where each one's history ends (the compare-and-set of every
-- batch), what it told, its labels and desired-state versions.
CREATE TABLE gateways (
    id               text PRIMARY KEY,
    last_change      bigint NOT NULL DEFAULT 0,
    lost_at_edge     bigint NOT NULL DEFAULT 0,
    outbox_last      bigint NOT NULL DEFAULT 0,
    last_applied     timestamptz,
    labels           jsonb NOT NULL DEFAULT '{}',
    desired_version  bigint NOT NULL DEFAULT 0,
    applied_version  bigint NOT NULL DEFAULT 0
);
CREATE INDEX gateways_labels ON gateways USING gin (labels);

-- The dictionary: one id per gateway, device and property.
CREATE TABLE series (
    id        serial PRIMARY KEY,
    gateway   text NOT NULL,
    device    text NOT NULL,
    property  text NOT NULL,
    UNIQUE (gateway, device, property)
);

-- The latest value of each series (the twin's reported side).
CREATE TABLE reported (
    series_id  integer PRIMARY KEY REFERENCES series (id),
    seq        bigint NOT NULL,
    ts         timestamptz NOT NULL,
    num        double precision,
    raw        bytea NOT NULL
);

-- Every change, partitioned by day of its reading time; retention drops
-- whole days. `num` is the value as a number (for SQL and dashboards),
-- `raw` the exact value (ferrite's own encoding). Readings outside the
-- days made ahead land in the default partition.
CREATE TABLE history (
    series_id  integer NOT NULL,
    seq        bigint NOT NULL,
    ts         timestamptz NOT NULL,
    num        double precision,
    raw        bytea NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX history_series_seq ON history (series_id, seq);
CREATE TABLE history_default PARTITION OF history DEFAULT;

-- Desired state: the value of each property, and every patch as sent.
CREATE TABLE desired (
    gateway   text NOT NULL,
    device    text NOT NULL,
    property  text NOT NULL,
    version   bigint NOT NULL,
    raw       bytea NOT NULL,
    PRIMARY KEY (gateway, device, property)
);
CREATE TABLE patches (
    gateway  text NOT NULL,
    version  bigint NOT NULL,
    body     bytea NOT NULL,
    PRIMARY KEY (gateway, version)
);
-- The gateway's last Reported per device.
CREATE TABLE reports (
    gateway  text NOT NULL,
    device   text NOT NULL,
    body     bytea NOT NULL,
    PRIMARY KEY (gateway, device)
);

-- Config bundles: the newest per gateway, and its newest report.
CREATE TABLE bundles (
    gateway  text PRIMARY KEY,
    version  bigint NOT NULL,
    body     bytea NOT NULL
);
CREATE TABLE config_reports (
    gateway  text PRIMARY KEY,
    version  bigint NOT NULL,
    body     bytea NOT NULL
);

CREATE TABLE audit (
    id    bigserial PRIMARY KEY,
    body  jsonb NOT NULL
);

CREATE TABLE rollouts (
    id    bigserial PRIMARY KEY,
    body  jsonb NOT NULL
);

-- Replicas alive: each one stamps its row every second.
CREATE TABLE replicas (
    id         text PRIMARY KEY,
    started    timestamptz NOT NULL DEFAULT now(),
    heartbeat  timestamptz NOT NULL DEFAULT now()
);
