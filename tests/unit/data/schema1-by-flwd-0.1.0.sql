BEGIN TRANSACTION;
CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT,
        type TEXT NOT NULL,
        ts REAL NOT NULL,
        data TEXT NOT NULL
    );
INSERT INTO "events" VALUES(1,'01m8wbv2s79sxj0agyemwn2kp0','run.queued',1.79624827575106143953e+09,'{"job":"hello-world","source":"examples","revision":"local:d625206480ea2c9c","args":{"name":"Alice","times":1},"profile":"secure","submitted_by":"dev"}');
INSERT INTO "events" VALUES(2,'01m8wbv2s79sxj0agyemwn2kp0','policy.decision',1.79624827576017880438e+09,'{"check":"host-env","outcome":"allow","reason":"host steps get a scrubbed environment (PATH, HOME, LANG and the job''s variables)"}');
INSERT INTO "events" VALUES(3,'01m8wbv2s79sxj0agyemwn2kp0','run.started',1.79624827576028347009e+09,'{"owner":"vm:24017:957729","profile":"secure","submitted_by":"dev"}');
INSERT INTO "events" VALUES(4,'01m8wbv2s79sxj0agyemwn2kp0','step.started',1.79624827576111102105e+09,'{"step":"greet","index":0,"kind":"shell"}');
INSERT INTO "events" VALUES(5,'01m8wbv2s79sxj0agyemwn2kp0','step.output',1.79624827577040910723e+09,'{"step":"greet","stream":"stdout","line":"Hello, Alice"}');
INSERT INTO "events" VALUES(6,'01m8wbv2s79sxj0agyemwn2kp0','step.finished',1.79624827577097558972e+09,'{"step":"greet","index":0,"status":"succeeded","exit_code":0,"duration":0.009711}');
INSERT INTO "events" VALUES(7,'01m8wbv2s79sxj0agyemwn2kp0','run.finished',1.79624827577188587186e+09,'{"status":"succeeded","exit_code":0,"duration":0.013403}');
CREATE TABLE idempotency (
        subject TEXT NOT NULL,
        key TEXT NOT NULL,
        body_hash TEXT NOT NULL,
        run_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (subject, key)
    );
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('schema_version','1');
INSERT INTO "meta" VALUES('digest_key','06ff4acfce8525e2a0d5cf3200007cd331aab321b58daab82b96454147c5c9ae');
INSERT INTO "meta" VALUES('metrics_cursor','7');
CREATE TABLE metric_totals (
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (name, labels)
) WITHOUT ROWID;
INSERT INTO "metric_totals" VALUES('flwd_policy_decisions_total','{"check": "host-env", "outcome": "allow"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "+Inf"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "0.1"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "0.25"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "0.5"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "1.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "10.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "120.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "1800.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "2.5"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "30.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "300.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "3600.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "5.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "60.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "600.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_run_duration_seconds_sum','{"source": "examples", "job": "hello-world"}',1.34027004241943359375e-02);
INSERT INTO "metric_totals" VALUES('flwd_runs_finished_total','{"source": "examples", "job": "hello-world", "status": "succeeded"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_runs_submitted_total','{"source": "examples", "job": "hello-world"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "+Inf"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "0.1"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "0.25"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "0.5"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "1.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "10.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "120.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "1800.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "2.5"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "30.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "300.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "3600.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "5.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "60.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_bucket','{"source": "examples", "job": "hello-world", "le": "600.0"}',1.0);
INSERT INTO "metric_totals" VALUES('flwd_step_duration_seconds_sum','{"source": "examples", "job": "hello-world"}',0.009711);
CREATE TABLE owners (
        owner TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
CREATE TABLE process_gauges (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (owner, name)
) WITHOUT ROWID;
CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job TEXT NOT NULL,
        source TEXT NOT NULL,
        revision TEXT,
        args TEXT NOT NULL,
        status TEXT NOT NULL,
        profile TEXT NOT NULL,
        submitted_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        exit_code INTEGER,
        reason TEXT,
        plan_digest TEXT,
        plan TEXT NOT NULL,
        owner TEXT,
        affinity TEXT,
        pgid INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
INSERT INTO "runs" VALUES(1,'01m8wbv2s79sxj0agyemwn2kp0','hello-world','examples','local:d625206480ea2c9c','{"name":"Alice","times":1}','succeeded','secure','dev',1.79624827575106143953e+09,1.79624827575848317147e+09,1.79624827577188587186e+09,0,NULL,'sha256:7584b3dc973b729f576e84382da3ac19116c25a03716dc80ddf52215b91fba75','{"job":{"name":"hello-world","source":"examples","description":"Greet someone","args":{"name":{"type":"string","required":true,"pattern":"^[A-Za-z ]{1,64}$","description":"Who to greet"},"times":{"type":"integer","required":false,"default":1,"minimum":1,"maximum":5,"description":"How many greetings"}},"requires":[],"timeout":60.0,"env":{},"steps":[{"name":"greet","kind":"shell","run":"for i in $(seq \"$FLWD_ARG_TIMES\"); do echo \"Hello, $FLWD_ARG_NAME\"; done"}],"path":"jobs/hello-world.yaml","revision":"local:d625206480ea2c9c"},"file_digest":"sha256:991e52f50b140c617c7bd77f01b53c9c39f9676cb201a5aadb0b190df8dab876","args":{"name":"Alice","times":1},"secret_args":[],"profile":"secure","decisions":[{"check":"host-env","outcome":"allow","reason":"host steps get a scrubbed environment (PATH, HOME, LANG and the job''s variables)"}],"digest":"sha256:7584b3dc973b729f576e84382da3ac19116c25a03716dc80ddf52215b91fba75"}','vm:24017:957729',NULL,NULL,0);
CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT '{}'
    );
CREATE TABLE stream_tickets (
        digest TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        run_id TEXT,
        expires_at REAL NOT NULL
    );
CREATE INDEX runs_status_seq ON runs(status, seq);
CREATE INDEX runs_job_seq ON runs(job, seq);
CREATE INDEX runs_owner ON runs(owner) WHERE status = 'running';
CREATE INDEX events_run_id ON events(run_id, id);
CREATE INDEX runs_finished_seq ON runs(seq) WHERE status NOT IN ('queued', 'running');
CREATE INDEX events_counted ON events(id) WHERE type <> 'step.output'
;
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('runs',1);
INSERT INTO "sqlite_sequence" VALUES('events',7);
COMMIT;
