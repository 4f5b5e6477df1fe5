-- The statistics tables carry no foreign keys on PostgreSQL. Each check of `host_id` or `report_id` runs a
-- `SELECT ... FOR KEY SHARE` on the parent row: one row lock per statistics row, written to the parent's tuple and
-- the WAL. On the ingest benchmark (1,000 agents, vitals, durable) those checks were 40% of the writer's
-- throughput: 6,138 reports/s with them, 9,996 without (BENCHMARKS.md, "PostgreSQL: ingest beside SQLite").
-- Nothing is lost: the only writer of these rows inserts them in the transaction that inserts their `reports` row
-- (ids from its RETURNING) after upserting their `hosts` row; hosts are never deleted; pruning deletes a report's
-- statistics rows before the report, in one transaction. SQLite keeps its declarations (V18 there is empty): its
-- check is a B-tree probe in-process, without locks. tests/tests/pg_schema.rs holds this list.
ALTER TABLE system_details  DROP CONSTRAINT system_details_host_id_fkey,  DROP CONSTRAINT system_details_report_id_fkey;
ALTER TABLE sessions        DROP CONSTRAINT sessions_host_id_fkey,        DROP CONSTRAINT sessions_report_id_fkey;
ALTER TABLE cpu             DROP CONSTRAINT cpu_host_id_fkey,             DROP CONSTRAINT cpu_report_id_fkey;
ALTER TABLE memory          DROP CONSTRAINT memory_host_id_fkey,          DROP CONSTRAINT memory_report_id_fkey;
ALTER TABLE swap            DROP CONSTRAINT swap_host_id_fkey,            DROP CONSTRAINT swap_report_id_fkey;
ALTER TABLE partitions      DROP CONSTRAINT partitions_host_id_fkey,      DROP CONSTRAINT partitions_report_id_fkey;
ALTER TABLE disk_usage      DROP CONSTRAINT disk_usage_host_id_fkey,      DROP CONSTRAINT disk_usage_report_id_fkey;
ALTER TABLE network         DROP CONSTRAINT network_host_id_fkey,         DROP CONSTRAINT network_report_id_fkey;
ALTER TABLE security_events DROP CONSTRAINT security_events_host_id_fkey, DROP CONSTRAINT security_events_report_id_fkey;
ALTER TABLE command_runs    DROP CONSTRAINT command_runs_host_id_fkey,    DROP CONSTRAINT command_runs_report_id_fkey;
ALTER TABLE command_metrics DROP CONSTRAINT command_metrics_host_id_fkey, DROP CONSTRAINT command_metrics_report_id_fkey;
