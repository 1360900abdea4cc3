package backup

import (
	"context"
	"time"
)

// The catalog contracts. Implementations: internal/catalog (Postgres) and,
// later, an embedded backend; both run the suite in catalog/catalogtest.
// Every method is safe for concurrent use. Missing rows are ErrNotFound,
// uniqueness violations ErrConflict, a backend that cannot be reached
// ErrUnavailable.

// TokenCatalog keeps API tokens. Secrets never reach it, only their hashes.
type TokenCatalog interface {
	CreateToken(ctx context.Context, t Token, secretHash []byte) error
	// TokenSecret returns the token and its stored secret hash.
	TokenSecret(ctx context.Context, id string) (Token, []byte, error)
	ListTokens(ctx context.Context) ([]Token, error)
	DeleteToken(ctx context.Context, id string) error
}

// JobCatalog keeps vzdump jobs.
type JobCatalog interface {
	CreateJob(ctx context.Context, j Job) (Job, error)
	// FinishJob marks a job finished; finishing twice is not an error.
	FinishJob(ctx context.Context, id string) (Job, error)
	GetJob(ctx context.Context, id string) (Job, error)
}

// SnapshotCatalog keeps backup sessions and the snapshots they become.
type SnapshotCatalog interface {
	// CreateSnapshot opens a backup session (State open). The namespace is
	// created when missing. A name already used in the namespace is
	// ErrConflict.
	CreateSnapshot(ctx context.Context, s Snapshot) (Snapshot, error)
	// GetSnapshot returns a session or snapshot by id, in any state.
	GetSnapshot(ctx context.Context, id string) (Snapshot, error)
	// SnapshotByName returns a committed snapshot.
	SnapshotByName(ctx context.Context, ns, name string) (Snapshot, error)
	// ListSnapshots returns committed snapshots, newest first; vmid 0 and
	// typ "" match all.
	ListSnapshots(ctx context.Context, ns string, vmid int, typ GuestType) ([]Snapshot, error)
	// UpdateSnapshotMeta sets notes and/or protected of a committed snapshot.
	UpdateSnapshotMeta(ctx context.Context, ns, name string, notes *string, protected *bool) (Snapshot, error)
	// PutSnapshotBlob stores a byte-exact text attached to an open session:
	// kind is "config", "firewall" or "log" ("log" may also be set after
	// commit). GetSnapshotBlob returns ErrNotFound when none was stored.
	PutSnapshotBlob(ctx context.Context, id, kind string, data []byte) error
	GetSnapshotBlob(ctx context.Context, id, kind string) ([]byte, error)
	// AddDisk and AddArchive attach an index to an open session.
	AddDisk(ctx context.Context, d Disk) error
	AddArchive(ctx context.Context, a Archive) error
	ListDisks(ctx context.Context, snapshotID string) ([]Disk, error)
	ListArchives(ctx context.Context, snapshotID string) ([]Archive, error)
	// CommitSnapshot makes an open session a visible snapshot in one
	// transaction, recording refs (the distinct chunks it references) and
	// counting a reference on each. Every ref must already be a known chunk
	// (AddChunks), else ErrInvalid. Committing a committed snapshot is
	// ErrConflict.
	CommitSnapshot(ctx context.Context, id string, size, newBytes int64, refs []ChunkID) (Snapshot, error)
	// DiscardSnapshot removes an open session and what was attached to it.
	// A committed snapshot is never discarded: ErrConflict.
	DiscardSnapshot(ctx context.Context, id string) error
	// DeleteSnapshot removes a committed snapshot and drops its chunk
	// references. A protected snapshot is ErrConflict.
	DeleteSnapshot(ctx context.Context, ns, name string) error
	// LastSnapshot returns the newest committed snapshot of a guest in a
	// namespace that came through storage, for incremental decisions.
	LastSnapshot(ctx context.Context, ns string, vmid int, typ GuestType, storage string) (Snapshot, error)
}

// ChunkCatalog keeps one row per stored chunk. Lookups are batched: one
// round trip per call, never per chunk.
type ChunkCatalog interface {
	// KnownChunks returns which of ids are stored and not marked bad, and
	// refreshes their touch time so a GC grace period covers the caller.
	KnownChunks(ctx context.Context, ids []ChunkID) (map[ChunkID]bool, error)
	// ReserveChunks records chunks about to be uploaded as pending, so that
	// what a crash leaves in the store is known to the catalog (and to GC).
	// Pending chunks are not known to KnownChunks nor accepted by commits.
	ReserveChunks(ctx context.Context, chunks []ChunkInfo) error
	// AddChunks records chunks that are now durable in the store; pending
	// ones become stored. Adding a known chunk only refreshes its touch time.
	AddChunks(ctx context.Context, chunks []ChunkInfo) error
}

// TaskCatalog keeps long-running tasks and their logs.
type TaskCatalog interface {
	CreateTask(ctx context.Context, t Task) (Task, error)
	GetTask(ctx context.Context, id string) (Task, error)
	// ListTasks returns the tasks of a snapshot or session, oldest first.
	ListTasks(ctx context.Context, snapshotID string) ([]Task, error)
	UpdateTaskProgress(ctx context.Context, id string, done, total int64) error
	// FinishTask sets the final state (TaskOK or TaskError with errMsg).
	FinishTask(ctx context.Context, id string, state TaskState, errMsg string) error
	AppendTaskLog(ctx context.Context, id string, lines ...string) error
	// TaskLog returns lines with Seq > since, oldest first.
	TaskLog(ctx context.Context, id string, since int64) ([]TaskLogLine, error)
	// FailStaleTasks fails running tasks whose progress has not been
	// written for staleAfter (their server is gone) and says how many.
	FailStaleTasks(ctx context.Context, staleAfter time.Duration) (int64, error)
}

// Catalog is everything the service keeps about backups.
type Catalog interface {
	TokenCatalog
	JobCatalog
	SnapshotCatalog
	ChunkCatalog
	TaskCatalog
	Stats(ctx context.Context) (RepositoryStats, error)
	// Ping checks that the backend answers (readiness).
	Ping(ctx context.Context) error
}
