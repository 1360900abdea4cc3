package backup

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Role is what a token may do. Roles are ordered: admin ⊃ backup ⊃ read.
type Role string

const (
	RoleAdmin  Role = "admin"  // everything, all namespaces
	RoleBackup Role = "backup" // create backups and restore in its namespaces
	RoleRead   Role = "read"   // list and read in its namespaces
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleBackup || r == RoleRead }

// Allows reports whether a holder of r may act with the privileges of need.
func (r Role) Allows(need Role) bool { return r.rank() >= need.rank() && need.rank() > 0 }

func (r Role) rank() int {
	switch r {
	case RoleAdmin:
		return 3
	case RoleBackup:
		return 2
	case RoleRead:
		return 1
	}
	return 0
}

// Token is an API token as the catalog keeps it; its secret is only ever
// stored hashed.
type Token struct {
	ID         string
	Name       string
	Role       Role
	Namespaces []string // empty: all namespaces
	CreatedAt  time.Time
	ExpiresAt  *time.Time
}

// InNamespace reports whether t may act in namespace ns.
func (t Token) InNamespace(ns string) bool {
	if t.Role == RoleAdmin || len(t.Namespaces) == 0 {
		return true
	}
	for _, n := range t.Namespaces {
		if n == ns {
			return true
		}
	}
	return false
}

// GuestType is the PVE guest type of a backup.
type GuestType string

const (
	GuestQemu GuestType = "qemu"
	GuestLXC  GuestType = "lxc"
)

// Valid reports whether g is a known guest type.
func (g GuestType) Valid() bool { return g == GuestQemu || g == GuestLXC }

// SnapshotState tells whether a backup session has been committed.
type SnapshotState string

const (
	SnapshotOpen      SnapshotState = "open"      // session running, invisible to listings
	SnapshotCommitted SnapshotState = "committed" // complete and visible
)

// VerifyState is the outcome of the last verification of a snapshot.
type VerifyState string

const (
	VerifyNone   VerifyState = "none"
	VerifyOK     VerifyState = "ok"
	VerifyFailed VerifyState = "failed"
)

// DefaultNamespace is used when a request names none.
const DefaultNamespace = "default"

var nsPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// ValidateNamespace checks a namespace name: 1–63 characters of letters,
// digits, '.', '_' and '-', starting with a letter or digit.
func ValidateNamespace(ns string) error {
	if !nsPattern.MatchString(ns) {
		return Errorf(ErrInvalid, "namespace %q: want 1-63 of [a-zA-Z0-9._-], starting with a letter or digit", ns)
	}
	return nil
}

// Job is one vzdump run on one node (job_init … job_cleanup).
type Job struct {
	ID         string
	Node       string
	Storage    string
	StartTime  time.Time
	CreatedAt  time.Time
	FinishedAt *time.Time
}

// LastBackup is the newest committed snapshot of one guest in a namespace,
// as the metrics show it.
type LastBackup struct {
	Namespace string
	VMID      int
	Type      GuestType
	Time      time.Time // the snapshot's backup time
	Size      int64     // its logical size in bytes
}

// Snapshot is a backup session and, once committed, the snapshot it became.
// Its ID is the backup session id of the API.
type Snapshot struct {
	ID          string
	Namespace   string
	Name        string
	JobID       string // "" when the backup was not part of a job
	Storage     string // PVE storage id the backup came through
	VMID        int
	Type        GuestType
	BackupTime  time.Time
	State       SnapshotState
	Notes       string
	Protected   bool
	VerifyState VerifyState
	VerifiedAt  *time.Time
	Size        int64 // logical bytes: disk sizes, or archive length
	NewBytes    int64 // bytes stored by this backup that no earlier one had
	CreatedAt   time.Time
	CommittedAt *time.Time
}

// Volname returns the PVE volume name of the snapshot.
func (s Snapshot) Volname() string { return "backup/" + s.Name }

const nameTimeLayout = "2006_01_02-15_04_05"

// SnapshotName returns the PVE archive name <type>-<vmid>-<YYYY_MM_DD-HH_MM_SS>
// for a backup time, in UTC.
func SnapshotName(t GuestType, vmid int, backupTime time.Time) string {
	return fmt.Sprintf("%s-%d-%s", t, vmid, backupTime.UTC().Format(nameTimeLayout))
}

// ParseSnapshotName splits a snapshot name into its type, vmid and time. It
// rejects anything that SnapshotName would not produce, so a name can be
// used safely in paths and keys.
func ParseSnapshotName(name string) (GuestType, int, time.Time, error) {
	bad := func(why string) (GuestType, int, time.Time, error) {
		return "", 0, time.Time{}, Errorf(ErrInvalid, "snapshot name %q: %s", name, why)
	}
	typ, rest, ok := strings.Cut(name, "-")
	if !ok || !GuestType(typ).Valid() {
		return bad("want <qemu|lxc>-<vmid>-<YYYY_MM_DD-HH_MM_SS>")
	}
	vmidStr, ts, ok := strings.Cut(rest, "-")
	if !ok {
		return bad("missing vmid")
	}
	vmid, err := strconv.Atoi(vmidStr)
	if err != nil || vmid < 1 || strconv.Itoa(vmid) != vmidStr {
		return bad("bad vmid")
	}
	t, err := time.ParseInLocation(nameTimeLayout, ts, time.UTC)
	if err != nil || t.Format(nameTimeLayout) != ts {
		return bad("bad time")
	}
	return GuestType(typ), vmid, t, nil
}

// Disk is one VM disk of a snapshot with its fixed index.
type Disk struct {
	SnapshotID string
	Device     string
	Size       int64
	ChunkSize  int
	BitmapMode string // none, new, reuse
	IndexKey   string // object key of the binary index in the chunk store's bucket
	IndexSum   [32]byte
	NewBytes   int64
}

// Archive is one container tar stream of a snapshot with its dynamic index.
type Archive struct {
	SnapshotID string
	Name       string
	Size       int64
	IndexKey   string
	IndexSum   [32]byte
	Files      int64
	NewBytes   int64
}

// ChunkInfo is the catalog's row for a stored chunk.
type ChunkInfo struct {
	ID         ChunkID
	Size       int64 // plaintext bytes
	StoredSize int64 // bytes in the store, envelope included
}

// TaskState is the state of a long-running task.
type TaskState string

const (
	TaskRunning TaskState = "running"
	TaskOK      TaskState = "ok"
	TaskError   TaskState = "error"
)

// Task is a long-running piece of work (a disk pull, GC, verify) whose
// progress lives in the catalog so any replica can answer for it.
type Task struct {
	ID         string
	Kind       string // "backup-disk", "gc", "verify", ...
	Namespace  string
	SnapshotID string // "" when not tied to a snapshot
	// SnapshotName and VMID describe the snapshot or session while it
	// exists; only FindTasks fills them.
	SnapshotName string
	VMID         int
	State        TaskState
	Done         int64
	Total        int64
	Error        string
	CreatedAt    time.Time
	UpdatedAt    time.Time
	FinishedAt   *time.Time
}

// TaskLogLine is one line of a task's log; Seq counts from 1.
type TaskLogLine struct {
	Seq  int64
	Time time.Time
	Text string
}

// RepositoryStats is what GET /status reports about the repository.
type RepositoryStats struct {
	Snapshots    int64
	LogicalBytes int64 // sum of committed snapshot sizes
	StoredBytes  int64 // sum of stored chunk sizes (envelopes included)
	Chunks       int64
}

// TaskFilter selects tasks for FindTasks. Zero fields select everything.
type TaskFilter struct {
	// Namespaces limits the tasks to these namespaces; nil means any.
	// Maintenance tasks have the namespace "".
	Namespaces []string
	State      TaskState
	Kind       string
	Since      time.Time // created at or after
	Limit      int       // 0: DefaultListLimit
}

// DefaultListLimit bounds listings whose filter sets no limit.
const DefaultListLimit = 100

// BackupRunState is the outcome of a backup session.
type BackupRunState string

const (
	RunRunning BackupRunState = "running" // the session is open
	RunOK      BackupRunState = "ok"      // committed
	RunFailed  BackupRunState = "failed"  // discarded before a commit
)

// Valid reports whether s is a known run state.
func (s BackupRunState) Valid() bool { return s == RunRunning || s == RunOK || s == RunFailed }

// BackupRun is the history of one backup session: what the dashboard and
// alerting show as a backup that ran, succeeded or failed. It outlives the
// session and the snapshot.
type BackupRun struct {
	ID         string // the session id
	Namespace  string
	Name       string
	VMID       int
	Type       GuestType
	Storage    string
	State      BackupRunState
	Error      string // why it failed
	StartedAt  time.Time
	FinishedAt *time.Time
	Size       int64 // logical bytes, once committed
	NewBytes   int64
	// SnapshotAvailable says that the committed snapshot still exists.
	SnapshotAvailable bool
}

// BackupRunFilter selects runs for ListBackupRuns. Zero fields select
// everything but the namespace, which is required.
type BackupRunFilter struct {
	Namespace string
	VMID      int
	State     BackupRunState
	Since     time.Time // started at or after
	Limit     int       // 0: DefaultListLimit
}
