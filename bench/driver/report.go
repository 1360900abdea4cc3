package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

func human(n int64) string {
	switch {
	case n >= gib:
		return fmt.Sprintf("%.2f GiB", float64(n)/gib)
	case n >= mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func fmtDur(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func mbps(bytes int64, d time.Duration) string {
	if bytes <= 0 || d <= 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", float64(bytes)/1e6/d.Seconds())
}

func cell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ", "\r", " ").Replace(s)
}

// measured returns a row of one round when it holds a figure.
func measured(res map[string]*result, key string) (*result, bool) {
	r := res[key]
	if r == nil || r.err != nil || r.na != "" || r.skipped != "" || r.dur <= 0 {
		return nil, false
	}
	return r, true
}

// stat is a figure over the rounds that measured it.
type stat struct {
	med, lo, hi float64
	n           int
}

func newStat(v []float64) (stat, bool) {
	if len(v) == 0 {
		return stat{}, false
	}
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return stat{med: med, lo: v[0], hi: v[n-1], n: n}, true
}

// format prints the median, and the range when there are several rounds.
func (s stat) format(f func(float64) string) string {
	if s.n > 1 {
		return fmt.Sprintf("%s (%s–%s)", f(s.med), f(s.lo), f(s.hi))
	}
	return f(s.med)
}

func x(f float64) string   { return fmt.Sprintf("%.2f×", f) }
func pct(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }
func secs(f float64) string {
	return fmtDur(time.Duration(f * float64(time.Second)))
}

// per collects f over the rounds where it has a value.
func (b *bench) per(f func(res map[string]*result) (float64, bool)) (stat, bool) {
	var v []float64
	for _, res := range b.all {
		if x, ok := f(res); ok {
			v = append(v, x)
		}
	}
	return newStat(v)
}

// timeStat is a phase's wall time in seconds over the rounds.
func (b *bench) timeStat(key string) (stat, bool) {
	return b.per(func(res map[string]*result) (float64, bool) {
		r, ok := measured(res, key)
		if !ok {
			return 0, false
		}
		return r.dur.Seconds(), true
	})
}

// ratio is, per round, t(ref)/t(phase) for two phases over the same bytes:
// how many times the phase's throughput is the reference's.
func (b *bench) ratio(phase, ref string) (stat, bool) {
	return b.per(func(res map[string]*result) (float64, bool) {
		p, ok1 := measured(res, phase)
		r, ok2 := measured(res, ref)
		if !ok1 || !ok2 {
			return 0, false
		}
		return r.dur.Seconds() / p.dur.Seconds(), true
	})
}

// fullVsCeiling is, per round, the slower of the nbdcopy and S3 PUT
// ceilings' time over the full backup's, and which ceiling that was.
func (b *bench) fullVsCeiling() (stat, string, bool) {
	names := map[string]int{}
	st, ok := b.per(func(res map[string]*result) (float64, bool) {
		f, ok := measured(res, "full")
		if !ok {
			return 0, false
		}
		n, okN := measured(res, "nbdcopy")
		p, okP := measured(res, "s3put")
		var c time.Duration
		switch {
		case okN && okP && n.dur >= p.dur:
			c = n.dur
			names["nbdcopy"]++
		case okN && okP:
			c = p.dur
			names["S3 PUT"]++
		default:
			return 0, false // both ceilings are needed
		}
		return c.Seconds() / f.dur.Seconds(), true
	})
	var parts []string
	for _, k := range []string{"S3 PUT", "nbdcopy"} {
		if names[k] > 0 {
			parts = append(parts, k)
		}
	}
	name := strings.Join(parts, " or ")
	if len(parts) > 1 {
		name += " (the slower one of each round)"
	}
	return st, name, ok
}

type row struct {
	key, label string
	vsCeiling  func() string
	vsRestic   func() string
}

func (b *bench) rows() []row {
	vs := func(phase, ref, name string) string {
		if st, ok := b.ratio(phase, ref); ok {
			return strings.TrimSpace(st.format(x) + " " + name)
		}
		return ""
	}
	join := func(parts ...string) string {
		var out []string
		for _, p := range parts {
			if p != "" {
				out = append(out, p)
			}
		}
		return strings.Join(out, "; ")
	}
	restoreCeil := func(k string) func() string {
		return func() string { return join(vs(k, "s3get", "S3 GET"), vs(k, "ref-qemu", "qemu-nbd→qemu-img")) }
	}
	return []row{
		{key: "nbdcopy", label: "ceiling: nbdcopy → null:"},
		{key: "s3put", label: "ceiling: S3 PUT"},
		{key: "s3get", label: "ceiling: S3 GET"},
		{key: "full", label: "**Backstop full backup**",
			vsCeiling: func() string {
				if st, name, ok := b.fullVsCeiling(); ok {
					return st.format(x) + " min(nbdcopy, S3 PUT) = " + name
				}
				return ""
			},
			vsRestic: func() string { return vs("full", "restic-full", "") }},
		{key: "incr", label: "**Backstop incremental, 1% dirty**",
			vsCeiling: func() string {
				if st, ok := b.ratio("full", "incr"); ok {
					return st.format(pct) + " of the full backup's time"
				}
				return ""
			},
			vsRestic: func() string { return vs("incr", "restic-incr", "") }},
		{key: "restore-raw", label: "**Backstop restore: GET …/raw (HTTP)**", vsCeiling: restoreCeil("restore-raw"),
			vsRestic: func() string { return vs("restore-raw", "restic-restore", "") }},
		{key: "restore-qemu", label: "**Backstop restore: qemu-img convert from export**", vsCeiling: restoreCeil("restore-qemu"),
			vsRestic: func() string { return vs("restore-qemu", "restic-restore", "") }},
		{key: "restore-fuse", label: "**Backstop restore: nbdfuse + qemu-img**",
			vsCeiling: func() string {
				return join(vs("restore-fuse", "s3get", "S3 GET"), vs("restore-fuse", "ref-fuse", "qemu-nbd→nbdfuse"))
			},
			vsRestic: func() string { return vs("restore-fuse", "restic-restore", "") }},
		{key: "ref-qemu", label: "reference: qemu-nbd → qemu-img convert"},
		{key: "ref-fuse", label: "reference: qemu-nbd → nbdfuse + qemu-img"},
		{key: "ct-ingest", label: "**Backstop container ingest**"},
		{key: "ct-restore", label: "**Backstop container restore**"},
		{key: "restic-full", label: "restic backup"},
		{key: "restic-incr", label: "restic second backup (1% changed)"},
		{key: "restic-restore", label: "restic restore"},
		{key: "rss-1g", label: "Backstop full backup, 1 GiB image (RSS check)"},
	}
}

// representative returns, for a row, the result of the round whose time
// is the median's (its notes describe the row), the median time, the
// per-round times and what went wrong in the other rounds.
func (b *bench) representative(key string) (rep *result, med time.Duration, times []string, problems []string) {
	st, ok := b.timeStat(key)
	best := -1.0
	for i, res := range b.all {
		r := res[key]
		if r == nil {
			continue
		}
		if m, ok2 := measured(res, key); ok2 {
			times = append(times, fmtDur(m.dur))
			if d := math.Abs(m.dur.Seconds() - st.med); best < 0 || d < best {
				rep, best = m, d
			}
			continue
		}
		if rep == nil && !ok {
			rep = r // nothing measured: show the first round's state
		}
		switch {
		case r.err != nil:
			problems = append(problems, fmt.Sprintf("round %d failed: %v", i+1, r.err))
		case r.na != "" && ok:
			problems = append(problems, fmt.Sprintf("round %d: not available: %s", i+1, r.na))
		case r.skipped != "" && ok:
			problems = append(problems, fmt.Sprintf("round %d: skipped: %s", i+1, r.skipped))
		}
	}
	if ok {
		med = time.Duration(st.med * float64(time.Second))
	}
	return rep, med, times, problems
}

func (b *bench) report() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("## Backstop benchmark, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	p("- Server: %s; run took %s", orDash(b.rev), fmtDur(time.Since(b.start).Round(time.Second)))
	if b.nRounds > 1 {
		p("; %d rounds: each figure is the median over the rounds (range in brackets), each ratio the median of the rounds' ratios", len(b.all))
	}
	p("\n")
	p("- Machine: %d CPUs (%s), %s RAM, Linux %s; load average %s at the start, %s at the end (shared machine)\n",
		runtime.NumCPU(), cpuModel(), memTotal(), osRelease(), b.loadStart, b.loadEnd)
	p("- Go %s; %s; restic: %s (GOMAXPROCS=%d for both the Backstop server and restic); S3: versitygw (scripts/peers.sh) on 127.0.0.1\n",
		strings.TrimPrefix(runtime.Version(), "go"), firstLine("qemu-img", "--version"), orDash(b.resticVer), runtime.NumCPU())
	if len(b.all) > 0 {
		if r := b.all[0]["inputs"]; r != nil {
			for _, n := range r.notes {
				p("- Input %s (seed %d)\n", n, b.seed)
			}
		}
		if r := b.all[0]["change"]; r != nil && r.err == nil && len(r.notes) > 0 {
			p("- 1%% change: %s\n", r.notes[0])
		}
	}
	p("- Restored images are written to %s. MB/s is 10^6 bytes/s over the image's logical size; \"data MB/s\" over the bytes that hold data (non-zero blocks; for the incremental: the dirty blocks). Ratios compare wall times of the same round only.\n\n", fsName(b.scratch))

	p("| phase | time | MB/s | data MB/s | vs ceiling | Backstop/restic | notes |\n")
	p("|---|---:|---:|---:|---|---|---|\n")
	for _, rw := range b.rows() {
		rep, med, times, problems := b.representative(rw.key)
		if rep == nil {
			continue
		}
		var t, speed, dspeed, vc, vr string
		var notes []string
		switch {
		case med > 0:
			t, speed, dspeed = fmtDur(med), mbps(rep.logical, med), mbps(rep.data, med)
			if rw.vsCeiling != nil {
				vc = rw.vsCeiling()
			}
			if rw.vsRestic != nil {
				vr = rw.vsRestic()
			}
			if len(times) > 1 {
				notes = append(notes, "rounds: "+strings.Join(times, " / "))
			}
			notes = append(notes, rep.notes...)
		case rep.err != nil:
			t, notes = "FAILED", []string{"error: " + rep.err.Error()}
		case rep.na != "":
			t, notes = "not available", []string{rep.na}
		default:
			t, notes = "skipped", []string{rep.skipped}
		}
		if med > 0 {
			notes = append(notes, problems...)
		}
		p("| %s | %s | %s | %s | %s | %s | %s |\n", rw.label, t, speed, dspeed, cell(vc), cell(vr), cell(strings.Join(notes, "; ")))
	}
	for i, res := range b.all {
		for _, k := range []string{"inputs", "qemu-nbd", "server", "change"} {
			if r := res[k]; r != nil && (r.err != nil || r.skipped != "") {
				p("| %s (round %d) | %s | | | | | %s |\n", k, i+1, map[bool]string{true: "FAILED", false: "skipped"}[r.err != nil],
					cell(strings.TrimSpace(errString(r.err)+" "+r.skipped)))
			}
		}
	}

	rssRow := func(what string, size int64, v []int64) {
		var vals []string
		var peak int64
		for _, x := range v {
			if x > 0 {
				vals = append(vals, human(x))
				peak = max(peak, x)
			}
		}
		if peak == 0 {
			return
		}
		all := ""
		if len(vals) > 1 {
			all = " (rounds: " + strings.Join(vals, ", ") + ")"
		}
		p("| %s | %s | %s%s |\n", what, human(size), human(peak), all)
	}
	if maxOf(b.rssFullAll) > 0 || maxOf(b.rss1GAll) > 0 || maxOf(b.rssRestoreAll) > 0 || maxOf(b.rssCTAll) > 0 {
		p("\n| server peak RSS (VmHWM of the process) | image | highest |\n|---|---|---:|\n")
		rssRow("main server, just after the full backup", b.img.size, b.rssFullAll)
		if b.small != nil {
			rssRow("second server, just after its full backup", b.small.size, b.rss1GAll)
		}
		rssRow("main server during a restore (fresh process for each restore)", b.img.size, b.rssRestoreAll)
		if b.tree != nil {
			rssRow("main server during the container ingest (fresh process; the size is the tar's)", b.tree.tarSize, b.rssCTAll)
		}
	}

	p("\n| target (issue) | measured | |\n|---|---|---|\n")
	for _, t := range b.targets() {
		p("| %s | %s | %s |\n", t.what, cell(t.figure), t.verdict)
	}
	p("\n")
	return w.String()
}

func maxOf(v []int64) int64 {
	var m int64
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

type target struct{ what, figure, verdict string }

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}

// labels name the phases in "not measured" reasons.
var labels = map[string]string{
	"nbdcopy": "nbdcopy ceiling", "s3put": "S3 PUT ceiling", "s3get": "S3 GET ceiling",
	"full": "full backup", "incr": "incremental", "restore-raw": "raw download",
	"restore-qemu": "qemu-img restore from an export", "restic-full": "restic backup",
	"restic-incr": "restic's second backup", "restic-restore": "restic restore", "rss-1g": "1 GiB server run",
}

// why says, for the phases among keys without a figure, what became of them.
func (b *bench) why(keys ...string) string {
	var out []string
	for _, k := range keys {
		if _, ok := b.timeStat(k); ok {
			continue
		}
		var r *result
		for _, res := range b.all {
			if r = res[k]; r != nil {
				break
			}
		}
		switch {
		case r == nil:
			out = append(out, labels[k]+" not run (phase not chosen)")
		case r.err != nil:
			out = append(out, labels[k]+" failed")
		case r.na != "":
			out = append(out, labels[k]+" not available ("+r.na+")")
		default:
			out = append(out, labels[k]+" skipped")
		}
	}
	return strings.Join(out, "; ")
}

func (b *bench) targets() []target {
	var out []target
	notMeasured := func(what, why string) { out = append(out, target{what, "not measured: " + why, "–"}) }
	speed := func(key string) string {
		st, _ := b.timeStat(key)
		rep, _, _, _ := b.representative(key)
		return mbps(rep.logical, time.Duration(st.med*float64(time.Second))) + " MB/s"
	}
	times := func(a, b2 string) string {
		ta, _ := b.timeStat(a)
		tb, _ := b.timeStat(b2)
		return ta.format(secs) + " vs " + tb.format(secs)
	}

	// Full backup vs the ceiling and restic.
	what := "Full backup ≥ 0.6× the smaller of the NBD and S3 PUT ceilings"
	if st, name, ok := b.fullVsCeiling(); ok {
		out = append(out, target{what, fmt.Sprintf("%s (Backstop %s; slower ceiling: %s)", st.format(x), speed("full"), name), verdict(st.med >= 0.6)})
	} else {
		notMeasured(what, b.why("full", "nbdcopy", "s3put"))
	}
	what = "Full backup ≥ 1.5× restic's throughput"
	if st, ok := b.ratio("full", "restic-full"); ok {
		out = append(out, target{what, fmt.Sprintf("%s (Backstop %s, restic %s)", st.format(x), speed("full"), speed("restic-full")), verdict(st.med >= 1.5)})
	} else {
		notMeasured(what, b.why("full", "restic-full"))
	}

	// Incremental.
	what = "Incremental, 1% dirty: ≤ 5% of the full backup's time"
	if st, ok := b.ratio("full", "incr"); ok {
		out = append(out, target{what, fmt.Sprintf("%s (%s)", st.format(pct), times("incr", "full")), verdict(st.med <= 0.05)})
	} else {
		notMeasured(what, b.why("full", "incr"))
	}
	what = "Incremental ≥ 10× faster than restic's second backup"
	if st, ok := b.ratio("incr", "restic-incr"); ok {
		out = append(out, target{what, fmt.Sprintf("%s (%s)", st.format(x), times("incr", "restic-incr")), verdict(st.med >= 10)})
	} else {
		notMeasured(what, b.why("incr", "restic-incr"))
	}

	// Restore through qemu-img from an export.
	indicative := func(ref string) string {
		if st, ok := b.ratio("restore-raw", ref); ok {
			return fmt.Sprintf(" (indicative, the raw HTTP download instead: %s)", st.format(x))
		}
		return ""
	}
	what = "Restore via qemu-img ≥ 0.5× the S3 GET ceiling"
	if st, ok := b.ratio("restore-qemu", "s3get"); ok {
		out = append(out, target{what, fmt.Sprintf("%s (Backstop %s, S3 GET %s)", st.format(x), speed("restore-qemu"), speed("s3get")), verdict(st.med >= 0.5)})
	} else {
		notMeasured(what, b.why("restore-qemu", "s3get")+indicative("s3get"))
	}
	what = "Restore via qemu-img faster than restic restore"
	if st, ok := b.ratio("restore-qemu", "restic-restore"); ok {
		out = append(out, target{what, fmt.Sprintf("%s restic's speed (%s)", st.format(x), times("restore-qemu", "restic-restore")), verdict(st.med > 1)})
	} else {
		notMeasured(what, b.why("restore-qemu", "restic-restore")+indicative("restic-restore"))
	}

	// Memory.
	what = fmt.Sprintf("Server peak RSS during the %s backup ≤ 512 MiB", sizeName(b.size))
	if peak := maxOf(b.rssFullAll); peak > 0 {
		out = append(out, target{what, human(peak) + " (highest of the rounds)", verdict(peak <= 512*mib)})
	} else {
		notMeasured(what, b.why("full"))
	}
	what = "Peak RSS independent of image size (1 GiB vs the main image; criterion: within 25%)"
	var rv []float64
	for i := range b.rssFullAll {
		if b.rssFullAll[i] > 0 && i < len(b.rss1GAll) && b.rss1GAll[i] > 0 {
			rv = append(rv, float64(b.rssFullAll[i])/float64(b.rss1GAll[i]))
		}
	}
	switch st, ok := newStat(rv); {
	case ok:
		out = append(out, target{what, fmt.Sprintf("%s vs %s: %s", human(maxOf(b.rssFullAll)), human(maxOf(b.rss1GAll)), st.format(x)), verdict(st.med <= 1.25)})
	case b.size <= rssSize:
		notMeasured(what, "the main image is 1 GiB or smaller (run with --size 4G)")
	default:
		notMeasured(what, b.why("full", "rss-1g"))
	}
	return out
}

func sizeName(n int64) string {
	if n%gib == 0 {
		return fmt.Sprintf("%d GiB", n/gib)
	}
	return human(n)
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	if kb, err := procStatusFile("/proc/meminfo", "MemTotal"); err == nil {
		return human(kb << 10)
	}
	return "?"
}

func procStatusFile(path, field string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			var n int64
			_, err := fmt.Sscan(v, &n)
			return n, err
		}
	}
	return 0, fmt.Errorf("no %s in %s", field, path)
}

func osRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return name + " ?"
	}
	l, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(l)
}
