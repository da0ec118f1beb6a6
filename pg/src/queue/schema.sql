-- The run queue and its leases (docs/ARCHITECTURE.md, "Cluster"). One row per run, kept after the
-- run is done so that its epoch only ever grows: a run resumed later is queued again on the same
-- row and its next claim gets a higher epoch than any before.
--
--   queued: waiting for a replica (owner and lease_until NULL)
--   leased: driven by `owner` under `epoch` until `lease_until` (database time; no replica clock
--           is ever compared); once lease_until has passed, any replica may claim it (epoch + 1)
--   done:   finished; `enqueue` puts it back in the queue
CREATE TABLE run_queue (
    run_id      text PRIMARY KEY,
    tenant      text NOT NULL,
    state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'leased', 'done')),
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    CHECK ((state = 'leased') = (owner IS NOT NULL AND lease_until IS NOT NULL))
) WITH (fillfactor = 80);
-- fillfactor: a heartbeat rewrites only lease_until, which no index (key or predicate) covers,
-- so with room left on the page the new row version stays on it (a HOT update: no index
-- writes, less vacuum).

-- Claims scan the runs that wait, oldest first.
CREATE INDEX run_queue_waiting ON run_queue (enqueued_at, run_id) WHERE state <> 'done';
-- A claim counts its replica's live leases: without this, a scan of every run ever queued.
CREATE INDEX run_queue_by_owner ON run_queue (owner) WHERE state = 'leased';

-- The fencing check: every write made on behalf of a lease (journal appends, ledger operations)
-- runs `SELECT impresario_fence(run, epoch)` first, in the same transaction. It raises SQLSTATE
-- IMP01 unless `epoch` is the run's current epoch and its lease has not expired. It locks the
-- queue row FOR SHARE until the transaction ends, so no other replica can claim the run (claims
-- lock FOR UPDATE SKIP LOCKED) between the check and the commit: a write either commits under
-- the current lease or not at all.
CREATE FUNCTION impresario_fence(p_run text, p_epoch bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
BEGIN
    SELECT epoch INTO current_epoch FROM run_queue
     WHERE run_id = p_run AND state = 'leased' AND lease_until > clock_timestamp()
       FOR SHARE;
    IF current_epoch IS DISTINCT FROM p_epoch THEN
        RAISE EXCEPTION 'run %: lease epoch % is stale (current: %)', p_run, p_epoch,
            coalesce(current_epoch::text, 'none, the lease expired or was handed back')
            USING ERRCODE = 'IMP01',
                  HINT = 'another replica may drive this run now: stop driving it';
    END IF;
END
$$;
