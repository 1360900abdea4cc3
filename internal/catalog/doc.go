// Package catalog is the Postgres implementation of backup.Catalog: what
// Backstop knows about its backups, apart from chunk data and binary
// indexes, which live in the chunk store. It uses pgx v5 (pgxpool) and
// applies the goose migrations embedded in package migrations on Open.
//
// # Schema
//
// namespaces, tokens (secret hashes only), jobs, snapshots (backup sessions
// and, once committed, snapshots), disks and archives (index location and
// checksum per snapshot), files (the file catalog of container archives),
// chunks (one row per stored chunk), tasks and task_log. Enumerations are
// CHECK constraints; rows that belong to a snapshot are deleted with it.
// migrations/00001_catalog.sql is the reference.
//
// # Reference counting
//
// A commit stores the distinct chunk ids a snapshot references as one
// sorted blob of 32-byte ids (snapshots.refs) and adds one to chunks.refs of
// each, in the transaction that makes the snapshot visible; deleting the
// snapshot subtracts them again from the blob. A commit refuses ids that
// have no chunk row or whose chunk is marked bad, so a visible snapshot
// never references a chunk the catalog does not know to be durable.
// Chunks of running backups have refs = 0 but a fresh touched_at
// (KnownChunks and AddChunks set it with the database clock); GC must only
// consider refs = 0 rows untouched for longer than its grace period.
//
// # Locking
//
// Every statement that writes chunk rows (commit, delete, KnownChunks,
// AddChunks, MarkChunksBad) locks them in id order, so concurrent backups
// sharing chunks cannot deadlock; a transaction Postgres still aborts as a
// deadlock victim is retried a few times. Statements that attach data to an
// open session take a share lock on the session row, so they cannot
// interleave with its commit. Task log lines get their sequence numbers
// from a counter on the task row, updated in the same statement that
// inserts them: appends to one task queue up on that row, and readers
// polling with "since" never miss a line.
//
// # Errors
//
// Errors are wrapped once as "catalog: <what>: ..." and carry a backup
// error kind: missing rows are backup.ErrNotFound, unique violations
// backup.ErrConflict, constraint and input violations backup.ErrInvalid,
// an unreachable or shutting-down server backup.ErrUnavailable. Where it
// helps, a *backup.Error carries a detail written for API clients. Context
// cancellation is passed through untouched.
//
// # Migrations
//
// Open (or Migrate) holds a session-level advisory lock while goose applies
// pending migrations, so replicas starting together take turns and the
// later ones find nothing to do.
package catalog
