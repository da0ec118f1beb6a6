-- Migration 12 (docs/ARCHITECTURE.md, "Cluster"): the run queue's claim order by tenant, and
-- queue rows pruned with journal retention.
--
-- claimed_at: when the run was last claimed. A claim orders the waiting runs by how many runs
-- their tenant already has in flight plus their place in their tenant's line, then by how long
-- ago their tenant was last claimed for, then by age: tenants take turns, so one that queued a
-- thousand runs cannot starve another's one run (`Queue::claim`).
ALTER TABLE run_queue ADD COLUMN claimed_at timestamptz;
-- A tenant's last claim: the newest claimed_at among its rows.
CREATE INDEX run_queue_tenant_claims ON run_queue (tenant, claimed_at);

-- A run's queue row goes with its journal: when retention deletes runs from journal_runs, their
-- rows that are not leased go too (a done run's epoch only matters while it can be resumed,
-- and a run whose journal is gone cannot be). Rows of runs deleted before this migration go now.
CREATE FUNCTION impresario_prune_queue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM run_queue q USING gone g WHERE q.run_id = g.run_id AND q.state <> 'leased';
    RETURN NULL;
END
$$;
CREATE TRIGGER journal_runs_prune_queue AFTER DELETE ON journal_runs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION impresario_prune_queue();
DELETE FROM run_queue q WHERE q.state <> 'leased'
   AND NOT EXISTS (SELECT 1 FROM journal_runs j WHERE j.run_id = q.run_id);
