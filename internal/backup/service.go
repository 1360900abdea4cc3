package backup

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// SourceOpener opens the disk a pull reads. internal/nbd implements it.
type SourceOpener interface {
	// OpenURI dials a source URI (nbd://host:port/export,
	// nbd+unix:///export?socket=PATH).
	OpenURI(ctx context.Context, uri string, req PullRequest) (DiskSource, error)
	// OpenConn speaks the source protocol over an established connection
	// (the plugin's tunnel); the export is req.Device. The source owns conn.
	OpenConn(ctx context.Context, conn net.Conn, req PullRequest) (DiskSource, error)
}

// BitmapMode is PVE's bitmap-mode of a disk in backup_vm.
type BitmapMode string

const (
	BitmapNone  BitmapMode = "none"  // no bitmap: read the whole disk
	BitmapNew   BitmapMode = "new"   // fresh, fully dirty bitmap: read the whole disk
	BitmapReuse BitmapMode = "reuse" // only dirty regions since the base are readable
)

// PullRequest describes one disk pull (POST /backups/{id}/disks).
type PullRequest struct {
	Device         string
	Size           int64
	BitmapMode     BitmapMode
	BitmapName     string // QEMU's dirty bitmap, for new and reuse
	URI            string // source URI, or "" with Tunnel
	Tunnel         bool   // the plugin opens the disk's tunnel
	BandwidthLimit int64  // bytes/s, 0 unlimited
}

var devicePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

func (r PullRequest) validate() error {
	switch {
	case !devicePattern.MatchString(r.Device):
		return Errorf(ErrInvalid, "device %q: want a QEMU drive id such as drive-scsi0", r.Device)
	case r.Size <= 0:
		return Errorf(ErrInvalid, "size %d: want a positive byte count", r.Size)
	case r.BitmapMode != BitmapNone && r.BitmapMode != BitmapNew && r.BitmapMode != BitmapReuse:
		return Errorf(ErrInvalid, "bitmap_mode %q: want none, new or reuse", r.BitmapMode)
	case r.BitmapMode != BitmapNone && r.BitmapName == "":
		return Errorf(ErrInvalid, "bitmap_mode %s needs bitmap_name", r.BitmapMode)
	case (r.URI == "") == !r.Tunnel:
		return Errorf(ErrInvalid, "source: give exactly one of uri and tunnel")
	case r.BandwidthLimit < 0:
		return Errorf(ErrInvalid, "bandwidth_limit %d is negative", r.BandwidthLimit)
	}
	return nil
}

// ServiceCatalog is what the Service needs of the catalog.
type ServiceCatalog interface {
	SnapshotCatalog
	ChunkCatalog
	TaskCatalog
	MaintenanceCatalog
}

// ServiceConfig tunes the Service.
type ServiceConfig struct {
	Pull PullConfig
	// TunnelTimeout bounds the wait for the plugin's tunnel after a pull
	// with source tunnel was started.
	TunnelTimeout time.Duration
	// ProgressInterval is how often a running pull writes its progress.
	ProgressInterval time.Duration
	// StaleAfter fails running tasks whose progress has not been written
	// for that long: their server is gone. 0 disables the check.
	StaleAfter time.Duration
	// CacheBytes bounds the decoded chunks kept for restores, shared by
	// every export and download; ReadAhead is how many chunks a read
	// fetches ahead, Prefetchers how many such fetches run at once.
	CacheBytes  int64
	ReadAhead   int
	Prefetchers int
	// GC and Verify tune the maintenance tasks.
	GC     GCConfig
	Verify VerifyConfig
	// TracerProvider and MeterProvider receive the Service's spans (one per
	// disk pull, archive, maintenance run and restore export) and metrics;
	// nil means none.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Hook, when set, is called at named points of GC and pulls
	// ("gc:cutoff", "gc:claimed", "gc:deleted", "pull:looked-up",
	// "pull:reserved"), from the goroutine doing the work, so tests can
	// interleave them exactly. Production leaves it nil.
	Hook func(stage string)
}

// DefaultServiceConfig returns the defaults.
func DefaultServiceConfig() ServiceConfig {
	return ServiceConfig{Pull: DefaultPullConfig(), TunnelTimeout: 2 * time.Minute, ProgressInterval: time.Second,
		StaleAfter: 5 * time.Minute, CacheBytes: 256 << 20, ReadAhead: 8, Prefetchers: 8,
		GC: DefaultGCConfig(), Verify: VerifyConfig{Workers: 8}}
}

// Service orchestrates backups: disk pulls and commits. Pulls outlive the
// request that starts them and run under the Service's own lifetime; Close
// cancels them and waits.
type Service struct {
	log     *slog.Logger
	cfg     ServiceConfig
	catalog ServiceCatalog
	chunks  ChunkStore
	objects ObjectStore
	sources SourceOpener
	cache   *ChunkCache
	now     func() time.Time

	ctx    context.Context // lifetime of background pulls
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	pulls map[pullKey]*runningPull // guarded by mu
	bases map[pullKey]string       // guarded by mu; base snapshot id per answered query incremental

	stored storedCache // namespaces' stored bytes, for quota checks

	exports *exportRegistry

	tracer  trace.Tracer
	metrics *serviceMetrics
}

type pullKey struct{ session, device string }

// taskBackupDisk is the kind of a disk pull's task.
const taskBackupDisk = "backup-disk"

type runningPull struct {
	taskID string
	cancel context.CancelFunc
	tunnel chan net.Conn // nil unless the source is a tunnel; buffered 1
}

// NewService returns a Service. Close it to stop running pulls.
func NewService(log *slog.Logger, cfg ServiceConfig, catalog ServiceCatalog, chunks ChunkStore, objects ObjectStore, sources SourceOpener) *Service {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		log: log, cfg: cfg, catalog: catalog, chunks: chunks, objects: objects, sources: sources,
		cache: NewChunkCache(chunks, cfg.CacheBytes, cfg.Prefetchers), now: time.Now, ctx: ctx, cancel: cancel, pulls: map[pullKey]*runningPull{},
		exports: newExportRegistry(),
	}
	tp, mp := telemetryProviders(cfg)
	s.tracer = tp.Tracer(instrumentationName)
	m, err := newServiceMetrics(mp, s)
	if err != nil {
		// Only a malformed instrument name fails, which a test catches:
		// run without metrics rather than without backups.
		log.Error("backup: create metrics", "err", err)
		m, _ = newServiceMetrics(metricnoop.NewMeterProvider(), s)
	}
	s.metrics = m
	if cfg.StaleAfter > 0 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.reapStaleTasks(ctx)
		}()
	}
	return s
}

// reapStaleTasks fails tasks left running by a server that died (kill -9,
// power loss), so PVE and the dashboard see the failure instead of a task
// that runs forever. Running pulls write progress every ProgressInterval.
func (s *Service) reapStaleTasks(ctx context.Context) {
	t := time.NewTicker(s.cfg.StaleAfter / 5)
	defer t.Stop()
	for {
		s.expireExports()
		n, err := s.catalog.FailStaleTasks(ctx, s.cfg.StaleAfter)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.WarnContext(ctx, "fail stale tasks", "err", err)
		case n > 0:
			s.log.WarnContext(ctx, "failed stale tasks left by a stopped server", "tasks", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close cancels running pulls and waits for them to finish.
func (s *Service) Close() {
	s.cancel()
	s.wg.Wait()
}

// IncrementalBase returns the snapshot and disk an incremental of device
// may build on (invariant 3): the last committed snapshot of the same
// namespace, vmid and storage, not failed verification, with the same
// device at the same size. ErrNotFound when there is none.
func (s *Service) IncrementalBase(ctx context.Context, session Snapshot, device string, size int64) (Snapshot, Disk, error) {
	base, err := s.catalog.LastSnapshot(ctx, session.Namespace, session.VMID, session.Type, session.Storage)
	if err != nil {
		return Snapshot{}, Disk{}, err
	}
	if base.VerifyState == VerifyFailed {
		return Snapshot{}, Disk{}, Errorf(ErrNotFound, "last snapshot %s failed verification", base.Name)
	}
	disks, err := s.catalog.ListDisks(ctx, base.ID)
	if err != nil {
		return Snapshot{}, Disk{}, err
	}
	for _, d := range disks {
		if d.Device == device && d.Size == size {
			return base, d, nil
		}
	}
	return Snapshot{}, Disk{}, Errorf(ErrNotFound, "last snapshot %s has no disk %s of %d bytes", base.Name, device, size)
}

// StartPull starts pulling one disk of an open VM backup session and
// returns its task. With a tunnel source the pull waits for AttachTunnel.
func (s *Service) StartPull(ctx context.Context, session Snapshot, req PullRequest) (Task, error) {
	if err := req.validate(); err != nil {
		return Task{}, err
	}
	if session.State != SnapshotOpen {
		return Task{}, Errorf(ErrConflict, "backup %s is already committed", session.ID)
	}
	if session.Type != GuestQemu {
		return Task{}, Errorf(ErrInvalid, "disk pulls are for qemu backups; %s is %s", session.Name, session.Type)
	}
	var base *FixedIndex
	if req.BitmapMode == BitmapReuse {
		baseSnap, disk, err := s.IncrementalBase(ctx, session, req.Device, req.Size)
		if errors.Is(err, ErrNotFound) {
			return Task{}, Errorf(ErrConflict, "bitmap_mode reuse for %s, but there is no base to build on (%s); the bitmap must be recreated (new)", req.Device, Detail(err))
		}
		if err != nil {
			return Task{}, err
		}
		if err := s.checkBase(session, req.Device, baseSnap); err != nil {
			return Task{}, err
		}
		if base, err = s.loadBase(ctx, disk); err != nil {
			return Task{}, err
		}
	}
	disks, err := s.catalog.ListDisks(ctx, session.ID)
	if err != nil {
		return Task{}, err
	}
	for _, d := range disks {
		if d.Device == req.Device {
			return Task{}, Errorf(ErrConflict, "disk %s of backup %s is already stored", req.Device, session.ID)
		}
	}
	key := pullKey{session.ID, req.Device}
	s.mu.Lock()
	if _, busy := s.pulls[key]; busy {
		s.mu.Unlock()
		return Task{}, Errorf(ErrConflict, "a pull of %s is already running for backup %s", req.Device, session.ID)
	}
	pctx, cancel := context.WithCancel(s.ctx)
	rp := &runningPull{cancel: cancel}
	if req.Tunnel {
		rp.tunnel = make(chan net.Conn, 1)
	}
	s.pulls[key] = rp
	s.mu.Unlock()

	task, err := s.catalog.CreateTask(ctx, Task{Kind: taskBackupDisk, Namespace: session.Namespace, SnapshotID: session.ID, Total: req.Size})
	if err != nil {
		s.forget(key)
		cancel()
		return Task{}, err
	}
	rp.taskID = task.ID
	pctx, span := s.startJobSpan(pctx, ctx, "backup.pull_disk", attribute.String("namespace", session.Namespace),
		attribute.Int("vmid", session.VMID), attribute.String("disk", req.Device), attribute.String("task_id", task.ID),
		attribute.String("bitmap_mode", string(req.BitmapMode)))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer s.forget(key)
		err := s.runPull(pctx, task, session, req, base, rp)
		endSpan(span, err)
	}()
	return task, nil
}

func (s *Service) forget(key pullKey) {
	s.mu.Lock()
	delete(s.pulls, key)
	s.mu.Unlock()
}

// TunnelWaiting reports whether a pull of device waits for its tunnel: the
// HTTP layer checks it before upgrading the connection.
func (s *Service) TunnelWaiting(session, device string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rp := s.pulls[pullKey{session, device}]
	if rp == nil || rp.tunnel == nil {
		return Errorf(ErrNotFound, "no pull of %s with source tunnel is running for backup %s on this server", device, session)
	}
	if len(rp.tunnel) > 0 {
		return Errorf(ErrConflict, "the tunnel of %s is already open", device)
	}
	return nil
}

// AttachTunnel hands the plugin's upgraded connection to the waiting pull,
// which owns it from then on.
func (s *Service) AttachTunnel(session, device string, conn net.Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rp := s.pulls[pullKey{session, device}]
	if rp == nil || rp.tunnel == nil {
		conn.Close()
		return Errorf(ErrNotFound, "no pull of %s is waiting for a tunnel", device)
	}
	select {
	case rp.tunnel <- conn:
		return nil
	default:
		conn.Close()
		return Errorf(ErrConflict, "the tunnel of %s is already open", device)
	}
}

// CancelPulls stops the running pulls of a session (it is being discarded).
func (s *Service) CancelPulls(session string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, rp := range s.pulls {
		if k.session == session {
			rp.cancel()
		}
	}
}

func indexKey(snapshotID, name, ext string) string {
	return "indexes/" + snapshotID + "/" + name + "." + ext
}

// loadBase reads a disk's index and makes sure every chunk it references is
// still stored and good. That query also refreshes the chunks' touch time,
// so a GC running meanwhile keeps them for the grace period.
func (s *Service) loadBase(ctx context.Context, d Disk) (*FixedIndex, error) {
	idx, err := s.loadFixedIndex(ctx, d)
	if err != nil {
		return nil, err
	}
	refs := idx.Refs()
	batch := s.cfg.Pull.DedupBatch * 8
	for i := 0; i < len(refs); i += batch {
		part := refs[i:min(i+batch, len(refs))]
		known, err := s.catalog.KnownChunks(ctx, part)
		if err != nil {
			return nil, err
		}
		for _, id := range part {
			if !known[id] {
				return nil, Errorf(ErrConflict, "base of %s references chunk %s, which is missing or damaged; the bitmap must be recreated (new)", d.Device, id)
			}
		}
	}
	return idx, nil
}

func (s *Service) loadFixedIndex(ctx context.Context, d Disk) (*FixedIndex, error) {
	b, err := s.objects.GetObject(ctx, d.IndexKey)
	if err != nil {
		return nil, fmt.Errorf("backup: load index of %s: %w", d.Device, err)
	}
	if sha256.Sum256(b) != d.IndexSum {
		return nil, fmt.Errorf("backup: index of %s does not match its catalog checksum: %w", d.Device, ErrChecksum)
	}
	return UnmarshalFixedIndex(b)
}

// runPull runs one pull to its end and records the outcome in its task.
func (s *Service) runPull(ctx context.Context, task Task, session Snapshot, req PullRequest, base *FixedIndex, rp *runningPull) error {
	taskDone := s.metrics.taskStarted(ctx, taskBackupDisk)
	log := s.log.With("snapshot", session.Name, "disk", req.Device, "task_id", task.ID)
	tlog := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if err := s.catalog.AppendTaskLog(context.WithoutCancel(ctx), task.ID, msg); err != nil {
			log.WarnContext(ctx, "append task log", "err", err)
		}
	}
	start := s.now()
	stats := &pullStats{}
	disk, err := s.pullDisk(ctx, task, session, req, base, rp, stats, tlog)
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.Int64("bytes_read", stats.Read.Load()), attribute.Int64("new_bytes", stats.NewBytes))
	state, msg := TaskOK, ""
	if err != nil {
		state, msg = TaskError, err.Error()
		if ctx.Err() != nil && s.ctx.Err() != nil {
			msg = "server shutting down: " + msg
		}
		tlog("backup of %s failed: %s", req.Device, msg)
		log.WarnContext(ctx, "disk pull failed", "err", err)
	} else {
		el := s.now().Sub(start)
		tlog("backup of %s done: read %d bytes, stored %d new bytes in %d chunks, %.1fs (%.0f MiB/s)",
			req.Device, stats.Read.Load(), disk.NewBytes, stats.NewCount, el.Seconds(), float64(stats.Read.Load())/(1<<20)/max(el.Seconds(), 1e-3))
		log.InfoContext(ctx, "disk pull done", "bytes", stats.Read.Load(), "new_bytes", disk.NewBytes, "duration", el)
	}
	fctx := context.WithoutCancel(ctx)
	if err := s.catalog.UpdateTaskProgress(fctx, task.ID, stats.Read.Load(), max(stats.Total.Load(), stats.Read.Load())); err != nil {
		log.WarnContext(ctx, "task progress", "err", err)
	}
	if err := s.catalog.FinishTask(fctx, task.ID, state, msg); err != nil {
		log.ErrorContext(ctx, "finish task", "err", err)
	}
	taskDone(state)
	return err
}

func (s *Service) pullDisk(ctx context.Context, task Task, session Snapshot, req PullRequest, base *FixedIndex,
	rp *runningPull, stats *pullStats, tlog func(string, ...any)) (Disk, error) {
	stopProgress := s.reportProgress(ctx, task.ID, stats, req.Size)
	defer stopProgress()
	src, err := s.openSource(ctx, req, rp, tlog)
	if err != nil {
		return Disk{}, err
	}
	defer src.Close()
	if src.Size() != req.Size {
		return Disk{}, Errorf(ErrInvalid, "the source of %s has %d bytes, the request says %d", req.Device, src.Size(), req.Size)
	}
	tlog("pulling %s: %d bytes, bitmap mode %s", req.Device, req.Size, req.BitmapMode)

	p := &puller{cfg: s.cfg.Pull, chunks: s.chunks, catalog: s.catalog, src: src, base: base, stats: stats,
		onWarn: func(msg string) { tlog("warning: %s", msg) }, hook: s.hook, metrics: s.metrics}
	if req.BandwidthLimit > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(req.BandwidthLimit), int(min(req.BandwidthLimit, int64(s.cfg.Pull.ChunkSize))))
	}
	idx, err := p.run(ctx)
	if err != nil {
		return Disk{}, err
	}
	b, err := idx.MarshalBinary()
	if err != nil {
		return Disk{}, err
	}
	d := Disk{
		SnapshotID: session.ID, Device: req.Device, Size: req.Size, ChunkSize: s.cfg.Pull.ChunkSize,
		BitmapMode: string(req.BitmapMode), IndexKey: indexKey(session.ID, req.Device, "fidx"),
		IndexSum: sha256.Sum256(b), NewBytes: stats.NewBytes,
	}
	if err := s.objects.PutObject(ctx, d.IndexKey, b); err != nil {
		return Disk{}, fmt.Errorf("store index: %w", err)
	}
	if err := s.catalog.AddDisk(ctx, d); err != nil {
		return Disk{}, fmt.Errorf("record disk: %w", err)
	}
	return d, nil
}

func (s *Service) openSource(ctx context.Context, req PullRequest, rp *runningPull, tlog func(string, ...any)) (DiskSource, error) {
	if !req.Tunnel {
		src, err := s.sources.OpenURI(ctx, req.URI, req)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", req.URI, err)
		}
		return src, nil
	}
	tlog("waiting for the tunnel of %s", req.Device)
	timer := time.NewTimer(s.cfg.TunnelTimeout)
	defer timer.Stop()
	select {
	case conn := <-rp.tunnel:
		src, err := s.sources.OpenConn(ctx, conn, req)
		if err != nil {
			return nil, fmt.Errorf("NBD handshake through the tunnel: %w", err)
		}
		return src, nil
	case <-timer.C:
		return nil, Errorf(ErrInvalid, "the plugin did not open the tunnel of %s within %s", req.Device, s.cfg.TunnelTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// reportProgress writes the pull's progress to its task until stopped.
// Until the extent map is known the total is the disk size. The writes
// double as the task's heartbeat (see reapStaleTasks).
func (s *Service) reportProgress(ctx context.Context, taskID string, stats *pullStats, size int64) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				total := stats.Total.Load()
				if total == 0 {
					total = size // extent map not known yet
				}
				if err := s.catalog.UpdateTaskProgress(ctx, taskID, stats.Read.Load(), total); err != nil && ctx.Err() == nil {
					s.log.WarnContext(ctx, "task progress", "task_id", taskID, "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// Commit makes an open session a visible snapshot: every disk pull must be
// finished, every index readable, and every chunk they reference gets a
// reference in the same catalog transaction (invariant 1).
func (s *Service) Commit(ctx context.Context, session Snapshot) (Snapshot, error) {
	if session.State != SnapshotOpen {
		return Snapshot{}, Errorf(ErrConflict, "backup %s is already committed as %s", session.ID, session.Name)
	}
	defer s.dropBases(session.ID)
	tasks, err := s.catalog.ListTasks(ctx, session.ID)
	if err != nil {
		return Snapshot{}, err
	}
	for _, t := range tasks {
		if t.Kind != taskBackupDisk {
			continue
		}
		switch t.State {
		case TaskRunning:
			return Snapshot{}, Errorf(ErrConflict, "disk pull task %s is still running", t.ID)
		case TaskError:
			return Snapshot{}, Errorf(ErrConflict, "disk pull task %s failed (%s); this backup cannot be committed", t.ID, t.Error)
		}
	}
	disks, err := s.catalog.ListDisks(ctx, session.ID)
	if err != nil {
		return Snapshot{}, err
	}
	archives, err := s.catalog.ListArchives(ctx, session.ID)
	if err != nil {
		return Snapshot{}, err
	}
	seen := map[ChunkID]struct{}{}
	var refs []ChunkID
	addRefs := func(ids []ChunkID) {
		for _, id := range ids {
			if _, ok := seen[id]; !ok {
				seen[id] = struct{}{}
				refs = append(refs, id)
			}
		}
	}
	var size, newBytes int64
	for _, d := range disks {
		idx, err := s.loadFixedIndex(ctx, d)
		if err != nil {
			return Snapshot{}, err
		}
		addRefs(idx.Refs())
		size += d.Size
		newBytes += d.NewBytes
	}
	for _, a := range archives {
		idx, err := s.loadArchiveIndex(ctx, a)
		if err != nil {
			return Snapshot{}, err
		}
		addRefs(idx.Refs())
		size += a.Size
		newBytes += a.NewBytes
	}
	snap, err := s.catalog.CommitSnapshot(ctx, session.ID, size, newBytes, refs)
	if err == nil {
		s.stored.forget(session.Namespace)
	}
	return snap, err
}

// Discard removes an open session: its running pulls are stopped, its
// catalog rows go (its run is kept as failed with reason), and so do the
// index objects it stored. Chunks it
// uploaded stay until GC finds them unreferenced.
func (s *Service) Discard(ctx context.Context, session Snapshot, reason string) error {
	s.CancelPulls(session.ID)
	s.dropBases(session.ID)
	keys, err := s.indexKeys(ctx, session.ID)
	if err != nil {
		return err
	}
	if err := s.catalog.DiscardSnapshot(ctx, session.ID, reason); err != nil {
		return err
	}
	s.deleteObjects(ctx, keys)
	return nil
}

// FailedTaskReason names the first task of a session that failed and its
// error ("" when none did): why a backup that is being discarded failed.
func (s *Service) FailedTaskReason(ctx context.Context, sessionID string) string {
	tasks, err := s.catalog.ListTasks(ctx, sessionID)
	if err != nil {
		return ""
	}
	for _, t := range tasks {
		if t.State == TaskError {
			return fmt.Sprintf("task %s failed: %s", t.Kind, t.Error)
		}
	}
	return ""
}

// Delete removes a committed snapshot (ErrConflict when protected): the
// catalog drops its chunk references in the same transaction, then its
// index objects are deleted.
func (s *Service) Delete(ctx context.Context, snap Snapshot) error {
	keys, err := s.indexKeys(ctx, snap.ID)
	if err != nil {
		return err
	}
	if err := s.catalog.DeleteSnapshot(ctx, snap.Namespace, snap.Name); err != nil {
		return err
	}
	s.stored.forget(snap.Namespace)
	s.deleteObjects(ctx, keys)
	return nil
}

func (s *Service) indexKeys(ctx context.Context, id string) ([]string, error) {
	disks, err := s.catalog.ListDisks(ctx, id)
	if err != nil {
		return nil, err
	}
	archives, err := s.catalog.ListArchives(ctx, id)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, d := range disks {
		keys = append(keys, d.IndexKey)
	}
	for _, a := range archives {
		keys = append(keys, a.IndexKey)
	}
	return keys, nil
}

// deleteObjects removes index objects, best effort: the catalog no longer
// points at them, so a failure leaves only an orphan to log.
func (s *Service) deleteObjects(ctx context.Context, keys []string) {
	for _, k := range keys {
		if err := s.objects.DeleteObject(ctx, k); err != nil && !errors.Is(err, ErrNotFound) {
			s.log.WarnContext(ctx, "delete index object", "key", k, "err", err)
		}
	}
}

// PruneResult is one snapshot's mark.
type PruneResult struct {
	Snapshot Snapshot
	Mark     PruneMark
}

// Prune applies keep options to every group (vmid, type) of a namespace,
// optionally narrowed to one vmid and type, and unless dryRun deletes what
// it marks remove. Periods are computed in loc.
func (s *Service) Prune(ctx context.Context, ns string, vmid int, typ GuestType, keep KeepOptions, dryRun bool, loc *time.Location) ([]PruneResult, error) {
	list, err := s.catalog.ListSnapshots(ctx, ns, vmid, typ)
	if err != nil {
		return nil, err
	}
	groups := map[string][]Snapshot{}
	var order []string
	for _, sn := range list {
		g := fmt.Sprintf("%s/%d", sn.Type, sn.VMID)
		if _, ok := groups[g]; !ok {
			order = append(order, g)
		}
		groups[g] = append(groups[g], sn)
	}
	var out []PruneResult
	for _, g := range order {
		marks := PruneMarks(groups[g], keep, loc)
		for _, sn := range groups[g] { // newest first, as listed
			out = append(out, PruneResult{Snapshot: sn, Mark: marks[sn.Name]})
		}
	}
	if dryRun {
		return out, nil
	}
	for _, r := range out {
		if r.Mark != MarkRemove {
			continue
		}
		err := s.Delete(ctx, r.Snapshot)
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			continue // protected or deleted meanwhile: nothing lost
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}
