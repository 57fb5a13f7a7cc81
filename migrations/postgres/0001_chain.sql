-- Reference data, lots and meals of the gavage, the inspection queue,
-- SQAL samples and the traceable products.

CREATE TABLE sites (
    code TEXT PRIMARY KEY,
    region TEXT NOT NULL
);

CREATE TABLE gaveurs (
    id BIGINT PRIMARY KEY,
    nom TEXT NOT NULL,
    site TEXT NOT NULL REFERENCES sites (code)
);

INSERT INTO sites (code, region) VALUES
    ('LL', 'Bretagne'),
    ('LS', 'Pays de la Loire'),
    ('MT', 'Occitanie');

-- Invented names: no real farmer is meant.
INSERT INTO gaveurs (id, nom, site) VALUES
    (1, 'Yannick Le Goff', 'LL'),
    (2, 'Maëlle Kerhervé', 'LL'),
    (3, 'Thibault Guérin', 'LS'),
    (4, 'Solène Babin', 'LS'),
    (5, 'Bernat Lacoste', 'MT');

CREATE TABLE gavage_runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    nb_lots BIGINT NOT NULL,
    acceleration DOUBLE PRECISION NOT NULL,
    seed BIGINT NOT NULL
);

-- Last sequence number of code_lot per site and month (YYMM), so that a new
-- run never reuses a code.
CREATE TABLE lot_sequences (
    site TEXT NOT NULL,
    yymm TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    PRIMARY KEY (site, yymm)
);

CREATE TABLE lots (
    code_lot TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES gavage_runs (run_id),
    gaveur_id BIGINT NOT NULL REFERENCES gaveurs (id),
    site TEXT NOT NULL REFERENCES sites (code),
    genetique TEXT NOT NULL,
    nb_canards BIGINT NOT NULL,
    duree_jours BIGINT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX lots_run ON lots (run_id);

CREATE TABLE meals (
    id BIGSERIAL PRIMARY KEY,
    code_lot TEXT NOT NULL REFERENCES lots (code_lot),
    jour BIGINT NOT NULL,
    moment TEXT NOT NULL,
    dose_theorique DOUBLE PRECISION NOT NULL,
    dose_reelle DOUBLE PRECISION NOT NULL,
    poids_moyen DOUBLE PRECISION NOT NULL,
    nb_canards_vivants BIGINT NOT NULL,
    taux_mortalite DOUBLE PRECISION NOT NULL,
    temperature DOUBLE PRECISION NOT NULL,
    humidite DOUBLE PRECISION NOT NULL,
    sim_time TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (code_lot, jour, moment)
);

CREATE TABLE sqal_pending_lots (
    code_lot TEXT PRIMARY KEY REFERENCES lots (code_lot),
    gaveur_id BIGINT NOT NULL,
    site TEXT NOT NULL,
    genetique TEXT NOT NULL,
    poids_moyen_final DOUBLE PRECISION NOT NULL,
    nb_canards_final BIGINT NOT NULL,
    taux_mortalite DOUBLE PRECISION NOT NULL,
    slaughter_at TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    lease_until TEXT,
    last_error TEXT,
    verdict TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX sqal_pending_lots_status ON sqal_pending_lots (status);

CREATE TABLE sqal_samples (
    id BIGSERIAL PRIMARY KEY,
    code_lot TEXT NOT NULL REFERENCES lots (code_lot),
    sample_index BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    tof_distances TEXT NOT NULL,
    as7341_counts TEXT NOT NULL,
    as7341_gain DOUBLE PRECISION NOT NULL,
    as7341_integration_ms DOUBLE PRECISION NOT NULL,
    volume_cm3 DOUBLE PRECISION,
    estimated_weight_g DOUBLE PRECISION,
    surface_uniformity DOUBLE PRECISION,
    freshness_index DOUBLE PRECISION,
    tof_score DOUBLE PRECISION NOT NULL,
    as7341_score DOUBLE PRECISION NOT NULL,
    final_score DOUBLE PRECISION NOT NULL,
    grade TEXT,
    invalid_reason TEXT,
    UNIQUE (code_lot, sample_index)
);

CREATE TABLE products (
    id BIGSERIAL PRIMARY KEY,
    product_id TEXT UNIQUE,
    token TEXT NOT NULL UNIQUE,
    sample_id BIGINT NOT NULL UNIQUE REFERENCES sqal_samples (id),
    code_lot TEXT NOT NULL REFERENCES lots (code_lot),
    grade TEXT NOT NULL,
    final_score DOUBLE PRECISION NOT NULL,
    tof_score DOUBLE PRECISION NOT NULL,
    as7341_score DOUBLE PRECISION NOT NULL,
    qr_payload TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX products_lot ON products (code_lot);
