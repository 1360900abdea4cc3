package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Backup times of the sessions (Unix seconds); each snapshot name differs.
const (
	timeFull   = 1764100000
	timeIncr   = 1764103600
	timeProbe  = 1764107200
	timeCT     = 1764110800
	timeRSS    = 1764114400
	vmidMain   = 100
	vmidRSS    = 101
	vmidCT     = 200
	vmidProbe  = 999
	rssSize    = gib
	deviceName = "drive-scsi0"
)

// runAll generates the inputs, then runs the chosen phases once per round.
func (b *bench) runAll(ctx context.Context) {
	b.newRound(0)
	ok := b.step(ctx, "inputs", "generating inputs", func(r *result) error {
		start := time.Now()
		im, err := genImage(ctx, b.work, "disk", b.size, b.seed)
		if err != nil {
			return err
		}
		b.img = im
		r.note("image: %s", im.describe())
		if b.phases["container"] {
			if b.tree, err = genTree(ctx, b.work, max(b.size/8, 64*mib), b.seed); err != nil {
				return fmt.Errorf("container tree: %w", err)
			}
			r.note("container tree: %d files (%d small ≤ 64 KiB, %d large), %s of contents, tar %s",
				b.tree.files, b.tree.smallFiles, b.tree.largeFiles, human(b.tree.bytes), human(b.tree.tarSize))
		}
		if b.phases["rss"] && b.size > rssSize {
			if b.small, err = genImage(ctx, b.work, "disk1g", rssSize, b.seed+1); err != nil {
				return fmt.Errorf("1 GiB image: %w", err)
			}
			_ = os.Remove(b.small.raw) // only its qcow2 is served
		}
		r.dur = time.Since(start)
		return nil
	})
	if !ok {
		return
	}
	for round := range b.nRounds {
		if round > 0 {
			b.newRound(round)
		}
		b.runRound(ctx)
		b.endRound()
		if b.aborted || ctx.Err() != nil {
			return
		}
	}
}

// runRound runs the chosen phases in an order that keeps every comparison
// inside one stretch of the run: ceilings, then each backup next to
// restic's counterpart, the restores next to their references. Every
// round starts from fresh servers, buckets and repositories; the image
// keeps the changes of the rounds before (each round rewrites another 1%).
func (b *bench) runRound(ctx context.Context) {
	var nbdA *qemuNBD
	ok := b.step(ctx, "qemu-nbd", "serving the image with qemu-nbd", func(r *result) error {
		if b.round > 0 {
			// The bitmap tracks what changed since the last backup: the
			// full backup of this round starts it afresh, as PVE would.
			if _, err := run(ctx, "qemu-img", "bitmap", "--clear", b.img.qcow2, "bm0"); err != nil {
				return err
			}
		}
		var err error
		nbdA, err = b.startQemuNBD(ctx, b.img.qcow2, false)
		return err
	})
	if !ok {
		return
	}

	if b.phases["nbd"] {
		b.step(ctx, "nbdcopy", "ceiling: nbdcopy → null:", func(r *result) error {
			start := time.Now()
			if _, err := run(ctx, "nbdcopy", "--connections=4", nbdA.uri, "null:"); err != nil {
				return err
			}
			r.dur, r.logical, r.data = time.Since(start), b.img.size, b.img.dataBytes
			r.note("4 connections, UNIX socket, qemu-nbd serving the qcow2")
			return nil
		})
	}
	if b.phases["s3"] {
		b.step(ctx, "s3put", "ceiling: S3 PUT/GET", func(r *result) error {
			put, get, n, err := b.s3Ceiling(ctx, b.img)
			if err != nil {
				return err
			}
			r.dur, r.logical, r.data = put, b.img.size, b.img.dataBytes
			r.note("%d objects of 4 MiB (every non-zero block), %d in flight, minio-go", n, putConcurrency)
			g := b.get("s3get")
			g.dur, g.logical, g.data = get, b.img.size, b.img.dataBytes
			g.note("the same %d objects, %d in flight (Backstop's restore read-ahead)", n, getConcurrency)
			return nil
		})
	}

	var srv *server
	if b.phases["full"] || b.phases["restore"] || b.phases["container"] {
		b.step(ctx, "server", "starting the Backstop server", func(r *result) error {
			var err error
			start := time.Now()
			srv, err = b.startServer(ctx, "main")
			r.dur = time.Since(start)
			return err
		})
	}
	needSrv := func(r *result) bool {
		if srv == nil {
			r.skipped = "needs the server, which did not start"
			return false
		}
		return true
	}

	if b.phases["full"] {
		b.step(ctx, "full", "Backstop: full backup", func(r *result) error {
			if !needSrv(r) {
				return nil
			}
			cpu := b.cpuProbe(map[string]int{"server": srv.pid(), "qemu-nbd": nbdA.pid})
			bk, err := srv.backupVM(ctx, vmidMain, timeFull, nbdA.uri, b.img.size, "none")
			if err != nil {
				return fmt.Errorf("%w; server log: %s", err, srv.logTail())
			}
			b.rssFull = srv.peakRSS()
			b.full, b.last = bk, bk
			r.dur, r.logical, r.data = bk.dur, b.img.size, b.img.dataBytes
			r.note("read %s from NBD, stored %s new", human(bk.task.Done), human(bk.newBytes))
			r.note("peak server RSS %s", human(b.rssFull))
			r.note("%s", cpu())
			return nil
		})
	}

	var rs *restic
	var resticFull resticRun
	if b.phases["restic"] {
		b.step(ctx, "restic-full", "restic: backup", func(r *result) error {
			var err error
			if rs, err = b.newRestic(ctx); err != nil {
				return err
			}
			b.resticVer = rs.version
			cpu := b.cpuProbe(nil)
			if resticFull, err = rs.backup(ctx, b.img.raw); err != nil {
				return err
			}
			b.resticOK = true
			r.dur, r.logical, r.data = resticFull.dur, b.img.size, b.img.dataBytes
			r.note("raw image file, added %s", human(resticFull.dataAdded))
			r.note("%s", cpu("restic", resticFull.cpu))
			return nil
		})
	}

	changed := false
	if b.phases["incremental"] || b.phases["restic"] {
		b.step(ctx, "change", "1% change through qemu-io", func(r *result) error {
			start := time.Now()
			nbdA.stop()
			n, err := b.img.changeOnePercent(ctx, b.work, b.seed*1000+uint64(b.round))
			if err != nil {
				return err
			}
			if nbdA, err = b.startQemuNBD(ctx, b.img.qcow2, false); err != nil {
				return err
			}
			b.dirty, changed = n, true
			r.dur = time.Since(start)
			r.note("%d of %d blocks (%s) rewritten with new random data in the qcow2 (bitmap bm0 records them) and the raw file; qemu-img compare: identical",
				len(b.img.dirty), b.img.blocks, human(n))
			return nil
		})
	}

	if b.phases["incremental"] {
		b.step(ctx, "incr", "Backstop: incremental (1% dirty)", func(r *result) error {
			switch {
			case !needSrv(r):
				return nil
			case b.full.snapshot == "":
				r.skipped = "needs the full backup"
				return nil
			case !changed:
				r.skipped = "needs the 1% change"
				return nil
			}
			cpu := b.cpuProbe(map[string]int{"server": srv.pid(), "qemu-nbd": nbdA.pid})
			bk, err := srv.backupVM(ctx, vmidMain, timeIncr, nbdA.uri, b.img.size, "reuse")
			if err != nil {
				return fmt.Errorf("%w; server log: %s", err, srv.logTail())
			}
			b.last = bk
			r.dur, r.logical, r.data = bk.dur, b.img.size, b.dirty
			if bk.task.Done != b.dirty || bk.task.Total != b.dirty {
				return fmt.Errorf("the incremental read %d of %d bytes from NBD; the dirty bytes are %d", bk.task.Done, bk.task.Total, b.dirty)
			}
			r.note("read %s = the dirty bytes ✓, stored %s new", human(bk.task.Done), human(bk.newBytes))
			r.note("%s", cpu())
			return nil
		})
	}

	if b.phases["restic"] {
		b.step(ctx, "restic-incr", "restic: second backup after the 1% change", func(r *result) error {
			if !b.resticOK || !changed {
				r.skipped = "needs restic's first backup and the 1% change"
				return nil
			}
			cpu := b.cpuProbe(nil)
			res, err := rs.backup(ctx, b.img.raw)
			if err != nil {
				return err
			}
			r.dur, r.logical, r.data = res.dur, b.img.size, b.dirty
			r.note("rereads and rechunks the whole file, added %s", human(res.dataAdded))
			r.note("%s", cpu("restic", res.cpu))
			return nil
		})
	}

	if b.phases["restore"] {
		b.restores(ctx, srv)
	}

	if b.phases["restic"] {
		b.step(ctx, "restic-restore", "restic: restore", func(r *result) error {
			if !b.resticOK {
				r.skipped = "needs restic's backup"
				return nil
			}
			dir, err := os.MkdirTemp(b.scratch, "restic-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			cpu := b.cpuProbe(nil)
			res, file, err := rs.restore(ctx, b.img.raw, dir)
			if err != nil {
				return err
			}
			r.dur, r.logical, r.data = res.dur, b.img.size, b.img.dataBytes
			used := cpu("restic", res.cpu)
			if err := b.verify(file); err != nil {
				return err
			}
			r.note("restic restore latest --target DIR (on %s); sha256 ✓", fsName(b.scratch))
			r.note("%s", used)
			return nil
		})
	}

	if b.phases["container"] {
		b.container(ctx, srv)
	}

	if srv != nil {
		srv.stop()
	}
	nbdA.stop()

	if b.phases["rss"] {
		b.step(ctx, "rss-1g", "Backstop: full backup of a 1 GiB image (second server, for RSS)", func(r *result) error {
			if b.small == nil {
				r.na = "the main image is not larger than 1 GiB: its own full backup is the 1 GiB figure"
				return nil
			}
			s2, err := b.startServer(ctx, "rss")
			if err != nil {
				return err
			}
			defer s2.stop()
			q, err := b.startQemuNBD(ctx, b.small.qcow2, false)
			if err != nil {
				return err
			}
			defer q.stop()
			cpu := b.cpuProbe(map[string]int{"server": s2.pid(), "qemu-nbd": q.pid})
			bk, err := s2.backupVM(ctx, vmidRSS, timeRSS, q.uri, b.small.size, "none")
			if err != nil {
				return fmt.Errorf("%w; server log: %s", err, s2.logTail())
			}
			b.rss1G = s2.peakRSS()
			r.dur, r.logical, r.data = bk.dur, b.small.size, b.small.dataBytes
			r.note("fresh server, database and bucket; peak server RSS %s", human(b.rss1G))
			r.note("%s", cpu())
			return nil
		})
	}
}

// restores measures every way out of Backstop against its reference:
// the raw HTTP download, qemu-img convert from an NBD export and through
// nbdfuse, and the same two from qemu-nbd serving the image itself.
func (b *bench) restores(ctx context.Context, srv *server) {
	snap := b.last.snapshot
	ready := func(r *result) bool {
		switch {
		case srv == nil:
			r.skipped = "needs the server, which did not start"
		case snap == "":
			r.skipped = "needs a committed backup"
		default:
			return true
		}
		return false
	}
	target := func() (string, error) {
		f, err := os.CreateTemp(b.scratch, "target-*.raw")
		if err != nil {
			return "", err
		}
		defer f.Close()
		return f.Name(), f.Truncate(b.img.size) // qemu-img convert -n needs it to exist
	}
	// convert times qemu-img convert from src into a fresh target and
	// verifies it; pids are the processes whose CPU time is reported.
	convert := func(r *result, src, note string, pids map[string]int) error {
		t, err := target()
		if err != nil {
			return err
		}
		defer os.Remove(t)
		cpu := b.cpuProbe(pids)
		start := time.Now()
		if _, err := run(ctx, "qemu-img", "convert", "-p", "-n", "-f", "raw", src, "-O", "raw", t); err != nil {
			return err
		}
		r.dur, r.logical, r.data = time.Since(start), b.img.size, b.img.dataBytes
		used := cpu()
		if err := b.verify(t); err != nil {
			return err
		}
		r.note("%s → raw file on %s; sha256 ✓", note, fsName(b.scratch))
		r.note("%s", used)
		return nil
	}
	viaFuse := func(r *result, uri, what string, pids map[string]int) error {
		file, unmount, err := b.nbdfuse(ctx, uri, b.img.size)
		if err != nil {
			return err
		}
		defer unmount()
		return convert(r, file, "nbdfuse --readonly MNT/disk.raw "+what+" + qemu-img convert from the file", pids)
	}

	// Each Backstop restore starts on a freshly started server process
	// (same catalog and bucket): its chunk cache is empty, as it would be
	// on a server that has not just read the same disk.
	b.step(ctx, "restore-raw", "Backstop: restore, GET …/raw", func(r *result) error {
		if !ready(r) {
			return nil
		}
		if err := srv.restart(ctx); err != nil {
			return err
		}
		f := filepath.Join(b.scratch, "raw-download.raw")
		defer os.Remove(f)
		cpu := b.cpuProbe(map[string]int{"server": srv.pid()})
		start := time.Now()
		n, err := srv.download(ctx, "/api/v1/snapshots/"+snap+"/disks/"+deviceName+"/raw", f)
		if err != nil {
			return err
		}
		r.dur, r.logical, r.data = time.Since(start), b.img.size, b.img.dataBytes
		used := cpu()
		if n != b.img.size {
			return fmt.Errorf("downloaded %d bytes, want %d", n, b.img.size)
		}
		if err := b.verify(f); err != nil {
			return err
		}
		r.note("snapshot %s, Go HTTP client → file on %s; sha256 ✓", snap, fsName(b.scratch))
		b.rssRestore = max(b.rssRestore, srv.peakRSS())
		r.note("peak server RSS %s", human(srv.peakRSS()))
		r.note("%s", used)
		return nil
	})

	// export restarts the server and creates an NBD export of the disk. na
	// says why there is none when the server cannot export yet.
	export := func() (uri, na string, err error) {
		if err := srv.restart(ctx); err != nil {
			return "", "", err
		}
		var exp struct {
			ID  string `json:"id"`
			URI string `json:"uri"`
		}
		err = srv.call(ctx, "POST", "/api/v1/snapshots/"+snap+"/disks/"+deviceName+"/exports",
			map[string]any{"ttl_seconds": 3600}, "", http.StatusCreated, &exp)
		if statusOf(err) == http.StatusNotImplemented {
			return "", "POST …/exports answers 501: " + err.(*apiError).detail, nil
		}
		if err != nil {
			return "", "", err
		}
		b.onCleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = srv.call(ctx, "DELETE", "/api/v1/exports/"+exp.ID, nil, "", http.StatusNoContent, nil)
		})
		if err := probeNBD(exp.URI); err != nil {
			return "", fmt.Sprintf("POST …/exports answers 201 (%s) but the export cannot be reached: %v", redactExport(exp.URI), err), nil
		}
		return exp.URI, "", nil
	}
	b.step(ctx, "restore-qemu", "Backstop: restore, qemu-img convert from an export", func(r *result) error {
		if !ready(r) {
			return nil
		}
		uri, na, err := export()
		if err != nil || na != "" {
			r.na = na
			return err
		}
		if err := convert(r, uri, "qemu-img convert -p -n -f raw nbd://…/EXPORT", map[string]int{"server": srv.pid()}); err != nil {
			return err
		}
		b.rssRestore = max(b.rssRestore, srv.peakRSS())
		r.note("peak server RSS %s", human(srv.peakRSS()))
		return nil
	})
	b.step(ctx, "restore-fuse", "Backstop: restore through nbdfuse", func(r *result) error {
		if !ready(r) {
			return nil
		}
		uri, na, err := export()
		if err != nil || na != "" {
			r.na = na
			return err
		}
		if err := viaFuse(r, uri, "nbd://…/EXPORT", map[string]int{"server": srv.pid()}); err != nil {
			return err
		}
		b.rssRestore = max(b.rssRestore, srv.peakRSS())
		r.note("peak server RSS %s", human(srv.peakRSS()))
		return nil
	})

	// The references: qemu-nbd serving the image as it is now, over TCP
	// like Backstop's export.
	var ref *qemuNBD
	b.step(ctx, "ref-qemu", "reference: qemu-img convert from qemu-nbd", func(r *result) error {
		var err error
		if ref, err = b.startQemuNBD(ctx, b.img.qcow2, true); err != nil {
			return err
		}
		return convert(r, ref.uri, "qemu-nbd (TCP 127.0.0.1) of the image itself, qemu-img convert -p -n -f raw nbd://…",
			map[string]int{"qemu-nbd": ref.pid})
	})
	b.step(ctx, "ref-fuse", "reference: nbdfuse from qemu-nbd", func(r *result) error {
		if ref == nil {
			r.skipped = "needs the reference qemu-nbd"
			return nil
		}
		return viaFuse(r, ref.uri, "nbd://… (qemu-nbd)", map[string]int{"qemu-nbd": ref.pid})
	})
	ref.stop()
}

// probeNBD checks that something accepts connections at an nbd:// URI.
func probeNBD(uri string) error {
	u, err := url.Parse(uri)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", u.Host, 3*time.Second)
	if err != nil {
		return fmt.Errorf("nothing listens on %s (BACKSTOP_NBD_LISTEN): %w", u.Host, err)
	}
	return c.Close()
}

// redactExport hides the export name: it is a capability.
func redactExport(uri string) string {
	if i := strings.LastIndexByte(uri, '/'); i > len("nbd://") {
		return uri[:i+1] + "…"
	}
	return uri
}

// container measures a container backup (tar stream ingest) and its
// restore, once PUT /backups/{id}/archive is implemented.
func (b *bench) container(ctx context.Context, srv *server) {
	var na string
	var snap string
	b.step(ctx, "ct-ingest", "Backstop: container ingest", func(r *result) error {
		if srv == nil {
			r.skipped = "needs the server, which did not start"
			return nil
		}
		// Probe with an empty archive in a session of its own, discarded.
		probe, err := srv.openBackup(ctx, vmidProbe, "lxc", timeProbe)
		if err != nil {
			return err
		}
		err = srv.call(ctx, "PUT", "/api/v1/backups/"+probe.ID+"/archive", bytes.NewReader(make([]byte, 1024)), "application/x-tar", http.StatusCreated, nil)
		srv.discard(probe.ID)
		if statusOf(err) == http.StatusNotImplemented {
			na = "PUT /api/v1/backups/{id}/archive answers 501: " + err.(*apiError).detail
			r.na = na
			return nil
		}
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		// A fresh process: its peak RSS is the ingest's own.
		if err := srv.restart(ctx); err != nil {
			return err
		}
		f, err := os.Open(b.tree.tar)
		if err != nil {
			return err
		}
		defer f.Close()
		cpu := b.cpuProbe(map[string]int{"server": srv.pid()})
		start := time.Now()
		sess, err := srv.openBackup(ctx, vmidCT, "lxc", timeCT)
		if err != nil {
			return err
		}
		var ar struct {
			Size     int64 `json:"size"`
			NewBytes int64 `json:"new_bytes"`
			Files    int64 `json:"files"`
		}
		// A reader of unknown length: sent chunked, as vzdump streams it.
		body := struct{ io.Reader }{f}
		if err := srv.call(ctx, "PUT", "/api/v1/backups/"+sess.ID+"/archive", body, "application/x-tar", http.StatusCreated, &ar); err != nil {
			srv.discard(sess.ID)
			return err
		}
		if err := srv.call(ctx, "POST", "/api/v1/backups/"+sess.ID+"/commit", nil, "", http.StatusOK, nil); err != nil {
			srv.discard(sess.ID)
			return err
		}
		r.dur, r.logical, r.data = time.Since(start), b.tree.tarSize, b.tree.tarSize
		used := cpu()
		snap = sess.Name
		b.rssCT = srv.peakRSS()
		r.note("tar of %d files (%s), chunked upload; server: %d files, %s new", b.tree.files, human(b.tree.tarSize), ar.Files, human(ar.NewBytes))
		r.note("peak server RSS %s", human(b.rssCT))
		r.note("%s", used)
		return nil
	})
	b.step(ctx, "ct-restore", "Backstop: container restore", func(r *result) error {
		switch {
		case na != "":
			r.na = "needs the container ingest (see above)"
			return nil
		case snap == "":
			r.skipped = "needs the container ingest"
			return nil
		}
		if err := srv.restart(ctx); err != nil {
			return err
		}
		f := filepath.Join(b.scratch, "restored.tar")
		defer os.Remove(f)
		cpu := b.cpuProbe(map[string]int{"server": srv.pid()})
		start := time.Now()
		n, err := srv.download(ctx, "/api/v1/snapshots/"+snap+"/archive", f)
		if err != nil {
			return err
		}
		r.dur, r.logical, r.data = time.Since(start), n, n
		r.note("peak server RSS %s", human(srv.peakRSS()))
		r.note("%s", cpu())
		sum, err := fileSHA(f)
		if err != nil {
			return err
		}
		if sum == b.tree.tarSHA {
			r.note("GET …/archive: the same tar byte for byte ✓")
			return nil
		}
		// A re-encoded stream must still list the same entries.
		want, err1 := run(ctx, "tar", "--list", "--verbose", "--numeric-owner", "--full-time", "--file", b.tree.tar)
		got, err2 := run(ctx, "tar", "--list", "--verbose", "--numeric-owner", "--full-time", "--file", f)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if want != got {
			return errors.New("the restored archive lists other entries than the ingested tar")
		}
		r.note("GET …/archive: re-encoded tar (%s), same entries ✓", human(n))
		return nil
	})
}

// verify compares a restored image with the raw image by SHA-256.
func (b *bench) verify(path string) error {
	want, err := b.img.currentSHA()
	if err != nil {
		return err
	}
	got, err := fileSHA(path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("restored bytes differ from the image: sha256 %s, want %s", got, want)
	}
	return nil
}

// cpuProbe starts counting the CPU time of the named processes (and of the
// S3 server when its PID is known); the returned function formats what
// they used since, plus extra figures the caller measured itself.
func (b *bench) cpuProbe(pids map[string]int) func(extra ...any) string {
	all := map[string]int{}
	for k, v := range pids {
		all[k] = v
	}
	if b.s3PID > 0 {
		all["versitygw"] = b.s3PID
	}
	start := time.Now()
	before := map[string]time.Duration{}
	for k, pid := range all {
		if t, err := cpuTime(pid); err == nil {
			before[k] = t
		}
	}
	return func(extra ...any) string {
		wall := time.Since(start)
		var parts []string
		for i := 0; i+1 < len(extra); i += 2 {
			parts = append(parts, fmt.Sprintf("%v %.1f s", extra[i], extra[i+1].(time.Duration).Seconds()))
		}
		for _, k := range []string{"server", "qemu-nbd", "versitygw"} {
			pid, ok := all[k]
			if !ok {
				continue
			}
			t0, ok := before[k]
			if !ok {
				continue
			}
			if t, err := cpuTime(pid); err == nil {
				parts = append(parts, fmt.Sprintf("%s %.1f s", k, (t-t0).Seconds()))
			}
		}
		return fmt.Sprintf("CPU: %s in %.1f s wall", strings.Join(parts, ", "), wall.Seconds())
	}
}

func fsName(dir string) string {
	if strings.HasPrefix(dir, "/dev/shm") {
		return "tmpfs"
	}
	return "disk"
}
