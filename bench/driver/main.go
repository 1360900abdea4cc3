// Command driver runs Backstop's end-to-end benchmark (see
// docs/benchmarks.md). bench/run builds the server and restic, starts the
// peers and calls it; it needs BACKSTOP_TEST_PG_DSN and
// BACKSTOP_TEST_S3_ENDPOINT/_ACCESS_KEY/_SECRET_KEY as scripts/peers.sh
// exports them, and qemu-img, qemu-nbd, qemu-io, nbdcopy, nbdfuse,
// fusermount3 and tar in PATH.
//
// It generates the inputs, then measures every phase in one run (or in
// several rounds, reporting medians) and prints a Markdown table of wall
// times, throughputs and the ratios between phases of the same round (the
// machines are shared: only such ratios are comparable).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// allPhases in the order they run; a phase needs the ones it names.
var allPhases = []string{"nbd", "s3", "full", "restic", "incremental", "restore", "container", "rss"}

type bench struct {
	size      int64
	seed      uint64
	phases    map[string]bool
	keepGoing bool
	work      string
	scratch   string
	serverBin string
	serverEnv []string
	resticBin string
	s3PID     int
	pgDSN     string
	s3        s3Peer

	start     time.Time
	rev       string
	loadStart string // /proc/loadavg when the run started and ended: how busy the machine was
	loadEnd   string
	cleanups  []func()
	aborted   bool

	nRounds int
	round   int                  // the round running
	res     map[string]*result   // its rows
	all     []map[string]*result // the rows of every round
	mark    int                  // len(cleanups) when the round started

	img       *image
	tree      *tree
	small     *image // the 1 GiB image of the RSS comparison
	resticVer string

	// State of the round running.
	dirty      int64 // bytes the 1% change rewrote
	full       vmBackup
	last       vmBackup // the snapshot restores read (the incremental's, when there is one)
	rssFull    int64
	rssRestore int64 // the highest peak of the processes that served a restore
	rss1G      int64
	rssCT      int64 // peak of the process that ingested the container archive
	resticOK   bool

	// Peak RSS figures of every round (0 when not measured).
	rssFullAll, rssRestoreAll, rss1GAll, rssCTAll []int64
}

// newRound starts the rows and state of round r.
func (b *bench) newRound(r int) {
	b.round = r
	b.res = map[string]*result{}
	b.all = append(b.all, b.res)
	b.mark = len(b.cleanups)
	b.dirty, b.full, b.last, b.resticOK = 0, vmBackup{}, vmBackup{}, false
	b.rssFull, b.rssRestore, b.rss1G, b.rssCT = 0, 0, 0, 0
}

// endRound stops what the round started (servers, exports, buckets,
// databases) and keeps its RSS figures.
func (b *bench) endRound() {
	for i := len(b.cleanups) - 1; i >= b.mark; i-- {
		b.cleanups[i]()
	}
	b.cleanups = b.cleanups[:b.mark]
	b.rssFullAll = append(b.rssFullAll, b.rssFull)
	b.rssRestoreAll = append(b.rssRestoreAll, b.rssRestore)
	b.rss1GAll = append(b.rss1GAll, b.rss1G)
	b.rssCTAll = append(b.rssCTAll, b.rssCT)
}

// result is one row of the table.
type result struct {
	dur     time.Duration
	err     error
	na      string // not available: why
	skipped string // not run: why
	logical int64  // bytes the throughput is computed over
	data    int64  // non-zero bytes involved, when meaningful
	notes   []string
}

func (r *result) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (b *bench) get(key string) *result {
	r := b.res[key]
	if r == nil {
		r = &result{}
		b.res[key] = r
	}
	return r
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) onCleanup(f func()) { b.cleanups = append(b.cleanups, f) }

func (b *bench) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}

// step runs one phase into the row key. A failure is recorded in the row;
// without --keep-going it also stops every later phase.
func (b *bench) step(ctx context.Context, key, title string, fn func(r *result) error) bool {
	r := b.get(key)
	if b.aborted {
		r.skipped = "not run: an earlier phase failed (run with --keep-going to go on)"
		return false
	}
	if ctx.Err() != nil {
		r.skipped = "not run: interrupted"
		return false
	}
	// Start every phase with no dirty pages left by the one before (the
	// generated inputs, the objects just stored): writeback of earlier
	// phases would otherwise be charged to this one.
	t := time.Now()
	syscall.Sync()
	if d := time.Since(t); d > 500*time.Millisecond {
		b.logf("sync before %q took %s", key, fmtDur(d))
	}
	if b.nRounds > 1 {
		title = fmt.Sprintf("round %d/%d: %s", b.round+1, b.nRounds, title)
	}
	b.logf("%s …", title)
	if err := fn(r); err != nil {
		r.err = err
		b.logf("%s FAILED: %v", title, err)
		if !b.keepGoing {
			b.aborted = true
		}
		return false
	}
	switch {
	case r.na != "":
		b.logf("%s: not available: %s", title, r.na)
	case r.skipped != "":
		b.logf("%s: skipped: %s", title, r.skipped)
	default:
		b.logf("%s: %s", title, fmtDur(r.dur))
	}
	return true
}

func main() {
	var (
		sizeFlag   = flag.String("size", "4G", "disk image size (K, M, G suffixes; rounded down to 4 MiB blocks)")
		phasesFlag = flag.String("phases", "all", "comma-separated phases: "+strings.Join(allPhases, ","))
		work       = flag.String("work", "", "work directory for inputs and logs (required; bench/run makes one)")
		scratch    = flag.String("scratch", "", "where restored images are written (default: /dev/shm when it has room, else the work directory)")
		out        = flag.String("out", "", "also write the Markdown report to this file")
		keepGoing  = flag.Bool("keep-going", false, "go on with the other phases when one fails")
		serverBin  = flag.String("server", "", "Backstop server binary (go build -o … ./cmd/server)")
		resticBin  = flag.String("restic", "", "restic v0.18.1 binary")
		seed       = flag.Uint64("seed", 1, "seed of every generated input")
		s3PID      = flag.Int("s3-pid", 0, "PID of the S3 server, to report its CPU time (optional)")
		rounds     = flag.Int("rounds", 1, "repeat the measured phases this many times (fresh servers, buckets and repositories each time) and report medians")
		rev        = flag.String("rev", "", "source revision of the server, for the report")
		serverEnv  multiFlag
	)
	flag.Var(&serverEnv, "server-env", "KEY=VALUE added to the server's environment (repeatable; e.g. GODEBUG=gctrace=1 for a look at the heap)")
	flag.Parse()
	size, err := parseSize(*sizeFlag)
	if err != nil {
		fatalf("--size: %v", err)
	}
	phases, err := parsePhases(*phasesFlag)
	if err != nil {
		fatalf("--phases: %v", err)
	}
	if *work == "" {
		fatalf("--work is required")
	}
	b := &bench{
		size: size, seed: *seed, phases: phases, keepGoing: *keepGoing, work: *work,
		serverBin: *serverBin, resticBin: *resticBin, s3PID: *s3PID,
		pgDSN: os.Getenv("BACKSTOP_TEST_PG_DSN"),
		s3: s3Peer{endpoint: os.Getenv("BACKSTOP_TEST_S3_ENDPOINT"), access: os.Getenv("BACKSTOP_TEST_S3_ACCESS_KEY"),
			secret: os.Getenv("BACKSTOP_TEST_S3_SECRET_KEY")},
		start: time.Now(), rev: *rev, loadStart: loadAvg(), nRounds: max(*rounds, 1),
		serverEnv: serverEnv,
	}
	if err := b.check(); err != nil {
		fatalf("%v", err)
	}
	if err := os.MkdirAll(b.work, 0o700); err != nil {
		fatalf("%v", err)
	}
	if b.scratch, err = pickScratch(*scratch, b.work, size); err != nil {
		fatalf("scratch directory: %v", err)
	}
	b.onCleanup(func() { _ = os.RemoveAll(b.scratch) })

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	b.runAll(ctx)
	b.loadEnd = loadAvg()
	interrupted := ctx.Err() != nil
	stop()
	b.cleanup()

	report := b.report()
	fmt.Print(report)
	if *out != "" {
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
			err = os.WriteFile(*out, []byte(report), 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "write %s: %v\n", *out, err)
		} else {
			fmt.Fprintf(os.Stderr, "report written to %s\n", *out)
		}
	}
	if b.failed() || interrupted {
		os.Exit(1)
	}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench driver: "+format+"\n", args...)
	os.Exit(2)
}

func (b *bench) check() error {
	var missing []string
	if b.pgDSN == "" {
		missing = append(missing, "BACKSTOP_TEST_PG_DSN")
	}
	if b.s3.endpoint == "" || b.s3.access == "" || b.s3.secret == "" {
		missing = append(missing, "BACKSTOP_TEST_S3_ENDPOINT/_ACCESS_KEY/_SECRET_KEY")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s not set (source scripts/peers.sh and call peers_start, as bench/run does)", strings.Join(missing, ", "))
	}
	if b.needServer() && b.serverBin == "" {
		return errors.New("--server is required for the Backstop phases")
	}
	if b.phases["restic"] && b.resticBin == "" {
		return errors.New("--restic is required for the restic phase")
	}
	return nil
}

func (b *bench) needServer() bool {
	return b.phases["full"] || b.phases["incremental"] || b.phases["restore"] || b.phases["container"] || b.phases["rss"]
}

func (b *bench) failed() bool {
	for _, res := range b.all {
		for _, r := range res {
			if r.err != nil {
				return true
			}
		}
	}
	return false
}

func parseSize(s string) (int64, error) {
	s = strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = mib
	case strings.HasSuffix(s, "G"):
		mult = gib
	case strings.HasSuffix(s, "T"):
		mult = 1 << 40
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	n := int64(f*float64(mult)) / blockSize * blockSize
	if n < 4*blockSize {
		return 0, fmt.Errorf("size %q: at least 16 MiB", s)
	}
	return n, nil
}

// parsePhases reads the phase list and adds what the chosen phases need:
// the incremental and the restores start from the full backup.
func parsePhases(s string) (map[string]bool, error) {
	m := map[string]bool{}
	for p := range strings.SplitSeq(s, ",") {
		p = strings.TrimSpace(p)
		switch {
		case p == "":
		case p == "all":
			for _, a := range allPhases {
				m[a] = true
			}
		case slices.Contains(allPhases, p):
			m[p] = true
		default:
			return nil, fmt.Errorf("unknown phase %q (known: all, %s)", p, strings.Join(allPhases, ", "))
		}
	}
	if len(m) == 0 {
		return nil, errors.New("no phase chosen")
	}
	if m["incremental"] || m["restore"] {
		m["full"] = true
	}
	return m, nil
}

// pickScratch returns a fresh directory for restored images: under the
// given one, else /dev/shm (tmpfs: restores are then not throttled by
// disk writeback, for Backstop and the references alike) when it has room
// for two images, else the work directory.
func pickScratch(dir, work string, size int64) (string, error) {
	if dir == "" {
		dir = work
		var st syscall.Statfs_t
		if syscall.Statfs("/dev/shm", &st) == nil && int64(st.Bavail)*int64(st.Bsize) > 2*size+gib {
			dir = "/dev/shm"
		}
	}
	return os.MkdirTemp(dir, "backstop-bench-restore-")
}
