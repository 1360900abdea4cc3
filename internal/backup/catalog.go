package backup

import (
	"context"
	"fmt"
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
	// DiscardSnapshot removes an open session and what was attached to it,
	// and records its run as failed with reason, in one transaction. A
	// committed snapshot is never discarded: ErrConflict.
	DiscardSnapshot(ctx context.Context, id, reason string) error
	// ListBackupRuns returns the history of backup sessions f selects,
	// newest first: one run per session ever opened (CreateSnapshot),
	// running while open, ok once committed, failed once discarded. Runs
	// outlive their snapshots.
	ListBackupRuns(ctx context.Context, f BackupRunFilter) ([]BackupRun, error)
	// DeleteSnapshot removes a committed snapshot and drops its chunk
	// references. A protected snapshot is ErrConflict.
	DeleteSnapshot(ctx context.Context, ns, name string) error
	// LastSnapshot returns the newest committed snapshot of a guest in a
	// namespace that came through storage, for incremental decisions.
	LastSnapshot(ctx context.Context, ns string, vmid int, typ GuestType, storage string) (Snapshot, error)
	// LastBackups returns the newest committed snapshot of every guest of
	// every namespace (whatever storage it came through), for the "last
	// successful backup" metrics alerting relies on.
	LastBackups(ctx context.Context) ([]LastBackup, error)
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
	// Every row that exists already (pending, stored or bad) gets its touch
	// time refreshed, so GC leaves it alone while the upload runs. Chunks
	// that GC is deleting are not reserved: the error wraps
	// ErrChunksDeleting (the others are reserved); retry after a pause.
	ReserveChunks(ctx context.Context, chunks []ChunkInfo) error
	// AddChunks records chunks that are now durable in the store; pending
	// ones become stored. Adding a known chunk only refreshes its touch time.
	// A chunk that GC is deleting is not recorded: ErrChunksDeleting.
	AddChunks(ctx context.Context, chunks []ChunkInfo) error
}

// ErrChunksDeleting says that chunks a writer wants to store are being
// deleted by GC. Their rows go once their objects are gone; then they can be
// reserved afresh. It wraps ErrConflict.
var ErrChunksDeleting = fmt.Errorf("chunks are being deleted by garbage collection: %w", ErrConflict)

// Lock is a cluster-wide lock taken with MaintenanceCatalog.TryLock.
type Lock interface {
	// Check returns nil while the lock is certainly held, and an error when
	// it may have been lost (the connection that holds it broke): its
	// holder must stop before doing anything the lock protects.
	Check(ctx context.Context) error
	// Unlock releases the lock. It is idempotent.
	Unlock()
}

// MaintenanceCatalog is what garbage collection, verification, accounting
// and quotas need of the catalog.
//
// Chunk lifecycle: pending (ReserveChunks) → stored (AddChunks) → counted
// by commits, uncounted by deletes → deleting (ClaimChunks, only with no
// reference and an old touch) → gone (ForgetChunks, after its object).
type MaintenanceCatalog interface {
	// TryLock takes the cluster-wide lock called name without waiting; ok
	// is false when someone else holds it. It is held until Unlock or until
	// the process holding it dies.
	TryLock(ctx context.Context, name string) (lock Lock, ok bool, err error)
	// GCCutoff returns the instant before which an unreferenced chunk's
	// last touch makes it collectable: the earlier of now − grace and the
	// opening of the oldest open backup session, on the clock that touch
	// times use. Every chunk a running backup references was touched after
	// its session opened, so no cutoff reaches it.
	GCCutoff(ctx context.Context, grace time.Duration) (time.Time, error)
	// CountCollectable says how many chunks ClaimChunks would find with
	// cutoff, and their stored bytes (for progress and dry runs).
	CountCollectable(ctx context.Context, cutoff time.Time) (chunks, bytes int64, err error)
	// ClaimChunks marks as deleting up to limit chunks, in id order after
	// after, that have no reference, are not deleting and were last touched
	// before cutoff, and returns them. Rows a concurrent writer holds
	// locked are skipped. The claim refreshes the touch time.
	ClaimChunks(ctx context.Context, cutoff time.Time, after ChunkID, limit int) ([]ChunkInfo, error)
	// StaleClaims returns up to limit chunks claimed by ClaimChunks more
	// than olderThan ago: left by a GC that died between claim and forget.
	StaleClaims(ctx context.Context, olderThan time.Duration, limit int) ([]ChunkInfo, error)
	// ForgetChunks removes the rows of deleting chunks among ids (their
	// objects are gone) and says how many went. Other ids are ignored.
	ForgetChunks(ctx context.Context, ids []ChunkID) (int64, error)
	// ReleaseChunks ends the claim on ids after their objects could not be
	// deleted, and marks them bad: an object may or may not be left, so
	// dedup must not trust it until a writer stores the chunk again.
	ReleaseChunks(ctx context.Context, ids []ChunkID) error
	// MarkChunksBad flags chunks that verification found damaged or
	// missing: KnownChunks stops reporting them and commits refuse them
	// until AddChunks records them again. Unknown ids are ignored.
	MarkChunksBad(ctx context.Context, ids []ChunkID) error
	// AbandonedSessions returns open sessions created before before that
	// have no running task: backups whose server or client went away.
	AbandonedSessions(ctx context.Context, before time.Time) ([]Snapshot, error)

	// SnapshotsToVerify returns the committed snapshots f selects, oldest
	// first, each with the number of distinct chunks it references.
	SnapshotsToVerify(ctx context.Context, f VerifyFilter) ([]VerifyCandidate, error)
	// SnapshotRefs returns the distinct chunks a committed snapshot holds a
	// reference on, sorted.
	SnapshotRefs(ctx context.Context, id string) ([]ChunkID, error)
	// SetVerifyState records the outcome of verifying a committed snapshot,
	// with the catalog's time as VerifiedAt.
	SetVerifyState(ctx context.Context, id string, state VerifyState) error
	// FailSnapshotsReferencing sets VerifyFailed on every committed
	// snapshot that references one of ids and returns their names.
	FailSnapshotsReferencing(ctx context.Context, ids []ChunkID) ([]Snapshot, error)

	// ExclusiveBytes returns the stored bytes of the chunks only the
	// committed snapshot id references: what deleting it frees.
	ExclusiveBytes(ctx context.Context, id string) (int64, error)
	// Usage returns the figures of a namespace's committed snapshots, per
	// guest too; vmid 0 means all guests (else totals are the guest's).
	Usage(ctx context.Context, ns string, vmid int) (Usage, error)
	// NamespaceStoredBytes returns the stored bytes of the distinct chunks
	// a namespace's committed snapshots reference (what quotas limit).
	NamespaceStoredBytes(ctx context.Context, ns string) (int64, error)
	// GetNamespace returns a namespace; one never used is ErrNotFound.
	GetNamespace(ctx context.Context, ns string) (Namespace, error)
	// ListNamespaces returns every namespace by name.
	ListNamespaces(ctx context.Context) ([]Namespace, error)
	// SetNamespaceQuota sets (nil: removes) a namespace's quota, creating
	// the namespace when missing.
	SetNamespaceQuota(ctx context.Context, ns string, quota *int64) (Namespace, error)
	// LastTask returns the newest task of a kind; none is ErrNotFound.
	LastTask(ctx context.Context, kind string) (Task, error)
}

// TaskCatalog keeps long-running tasks and their logs.
type TaskCatalog interface {
	CreateTask(ctx context.Context, t Task) (Task, error)
	GetTask(ctx context.Context, id string) (Task, error)
	// ListTasks returns the tasks of a snapshot or session, oldest first.
	ListTasks(ctx context.Context, snapshotID string) ([]Task, error)
	// FindTasks returns the tasks f selects, newest first, with the name
	// and guest of their snapshot or session while it exists.
	FindTasks(ctx context.Context, f TaskFilter) ([]Task, error)
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
	MaintenanceCatalog
	FileCatalog
	Stats(ctx context.Context) (RepositoryStats, error)
	// Ping checks that the backend answers (readiness).
	Ping(ctx context.Context) error
}
