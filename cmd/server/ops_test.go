package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"

	"github.com/backstop-pve/backstop/internal/testenv"
)

const (
	mib        = 1 << 20
	opsToken   = "ops-admin-token-for-tests"
	opsDevice  = "drive-scsi0"
	opsVMID    = 4242
	backupTime = int64(1764100000)
)

// opsClient calls a server started by startServer with the admin token.
type opsClient struct {
	t    *testing.T
	base string
}

func (c opsClient) do(method, path string, body any) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+opsToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, b
}

// must calls do and decodes the answer into v, failing unless it is want.
func (c opsClient) must(method, path string, body any, want int, v any) {
	c.t.Helper()
	code, b := c.do(method, path, body)
	if code != want {
		c.t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			c.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// metrics scrapes /metrics and parses it.
func (c opsClient) metrics() map[string]*dto.MetricFamily {
	c.t.Helper()
	code, b := c.do("GET", "/metrics", nil)
	if code != http.StatusOK {
		c.t.Fatalf("GET /metrics: %d %s", code, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		c.t.Fatalf("parse /metrics: %v\n%s", err, b)
	}
	return fams
}

// value returns the value of the series of family name whose labels
// include want, or fails (listing the families) when there is none.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := lookup(fams, name, want)
	if !ok {
		var names []string
		for n := range fams {
			if strings.HasPrefix(n, "backstop") {
				names = append(names, n)
			}
		}
		t.Fatalf("no series %s%v on /metrics; backstop families: %v", name, want, names)
	}
	return v
}

func lookup(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// opsImage writes a raw image of 4 MiB slots: random, zero, random, a copy
// of slot 0, zero, half random half zero. It returns the path, the bytes
// QEMU reports as data (everything not a zero run) and the SHA-256.
func opsImage(t *testing.T, dir string) (path string, dataBytes int64, sum string) {
	t.Helper()
	rng := rand.New(rand.NewChaCha8([32]byte{42}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32() | 1) // never a zero byte: no zero run inside data
		}
		return b
	}
	first := random(4 * mib)
	slots := [][]byte{first, make([]byte, 4*mib), random(4 * mib), first, make([]byte, 4*mib),
		append(random(2*mib), make([]byte, 2*mib)...)}
	h := sha256.New()
	var all []byte
	for _, s := range slots {
		all = append(all, s...)
	}
	h.Write(all)
	path = filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(path, all, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, 4*mib + 4*mib + 4*mib + 2*mib, hex.EncodeToString(h.Sum(nil))
}

func tool(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(testenv.Tool(t, testenv.PeerQEMU, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// startQemuNBD exports img (qcow2) read-only on a UNIX socket; it is stopped
// by PID when the test ends.
func startQemuNBD(t *testing.T, img string) (uri string) {
	t.Helper()
	dir := t.TempDir()
	pidFile, sock := filepath.Join(dir, "nbd.pid"), filepath.Join(dir, "nbd.sock")
	tool(t, "qemu-nbd", "--fork", "--pid-file="+pidFile, "--persistent", "--shared=8", "--read-only",
		"-f", "qcow2", "-x", opsDevice, "-k", sock, img)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("qemu-nbd pid %q", b)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for range 100 {
			if syscall.Kill(pid, 0) != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	})
	return "nbd+unix:///" + opsDevice + "?socket=" + sock
}

// opsEnv is the environment of a server on a fresh database and bucket of
// the test S3 server; it also returns the bucket's directory.
func opsEnv(t *testing.T) (map[string]string, string) {
	t.Helper()
	s3 := testenv.S3(t)
	testenv.Tool(t, testenv.PeerQEMU, "qemu-nbd")
	bucket := testenv.Bucket()
	return map[string]string{
		"BACKSTOP_DATABASE_URL":  testenv.PostgresDSN(t),
		"BACKSTOP_STORE":         "s3://" + bucket + "?endpoint=" + s3.Endpoint + "&insecure=1",
		"BACKSTOP_S3_ACCESS_KEY": s3.AccessKey,
		"BACKSTOP_S3_SECRET_KEY": s3.SecretKey,
		"BACKSTOP_ADMIN_TOKEN":   opsToken,
	}, filepath.Join(s3.Dir, bucket)
}

type opsSession struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// backupDisk runs a whole VM backup of one disk from uri, as the plugin
// does, and returns the session.
func backupDisk(t *testing.T, c opsClient, uri string, size int64) opsSession {
	t.Helper()
	var s opsSession
	c.must("POST", "/api/v1/backups", map[string]any{"storage": "bs", "vmid": opsVMID, "type": "qemu", "backup_time": backupTime},
		http.StatusCreated, &s)
	var task struct {
		TaskID string `json:"task_id"`
	}
	c.must("POST", "/api/v1/backups/"+s.ID+"/disks", map[string]any{"device": opsDevice, "size": size, "bitmap_mode": "none",
		"source": map[string]any{"uri": uri}}, http.StatusAccepted, &task)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var tv struct {
			State string `json:"state"`
			Error string `json:"error"`
		}
		c.must("GET", "/api/v1/tasks/"+task.TaskID, nil, http.StatusOK, &tv)
		if tv.State == "ok" {
			break
		}
		if tv.State != "running" || time.Now().After(deadline) {
			t.Fatalf("pull task: %+v", tv)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.must("POST", "/api/v1/backups/"+s.ID+"/commit", nil, http.StatusOK, nil)
	return s
}

// chunkObjectBytes sums the sizes of the chunk objects in a versitygw
// bucket directory: what the backup really wrote to S3.
func chunkObjectBytes(t *testing.T, bucketDir string) (total int64, count int) {
	t.Helper()
	root := filepath.Join(bucketDir, "chunks")
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return 0, 0 // none yet, or all collected
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += fi.Size()
		count++
		return nil
	})
	if err != nil {
		t.Fatalf("walk bucket: %v", err)
	}
	return total, count
}

// TestMetrics_BackupAndRestore backs up a qcow2 disk through qemu-nbd,
// restores it over HTTP and over an NBD export, and checks that /metrics
// moved by exactly what happened: NBD bytes read = the disk's data bytes,
// bytes uploaded = the chunk objects in the bucket, one dedup hit for the
// repeated slot, the guest's last-backup gauges = the snapshot, and the
// active exports going up and down.
func TestMetrics_BackupAndRestore(t *testing.T) {
	env, bucketDir := opsEnv(t)
	old := lastBackupInterval
	lastBackupInterval = 100 * time.Millisecond
	t.Cleanup(func() { lastBackupInterval = old })
	c := opsClient{t: t, base: startServer(t, env)}

	dir := t.TempDir()
	raw, dataBytes, wantSHA := opsImage(t, dir)
	img := filepath.Join(dir, "disk.qcow2")
	tool(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	size := int64(6 * 4 * mib)

	before := c.metrics()
	if v, ok := lookup(before, "backstop_nbd_read_bytes_total", nil); ok && v != 0 {
		t.Fatalf("NBD bytes read before any backup: %v", v)
	}
	vmid := map[string]string{"vmid": strconv.Itoa(opsVMID), "namespace": "default", "type": "qemu"}
	if _, ok := lookup(before, "backstop_guest_last_backup_timestamp_seconds", vmid); ok {
		t.Fatal("last-backup gauge for a guest that has no backup yet")
	}

	s := backupDisk(t, c, startQemuNBD(t, img), size)
	var snap struct {
		NewBytes int64 `json:"new_bytes"`
		Size     int64 `json:"size"`
	}
	c.must("GET", "/api/v1/snapshots/"+s.Name, nil, http.StatusOK, &snap)
	storedBytes, storedChunks := chunkObjectBytes(t, bucketDir)

	// The per-guest gauges are refreshed by a background loop.
	var m map[string]*dto.MetricFamily
	for deadline := time.Now().Add(10 * time.Second); ; {
		m = c.metrics()
		if _, ok := lookup(m, "backstop_guest_last_backup_timestamp_seconds", vmid); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"backstop_nbd_read_bytes_total", nil, float64(dataBytes)},
		{"backstop_upload_bytes_total", nil, float64(storedBytes)},
		{"backstop_upload_bytes_total", nil, float64(snap.NewBytes)},
		{"backstop_chunks_new_total", nil, float64(storedChunks)},
		{"backstop_dedup_hits_total", nil, 1}, // slot 3 repeats slot 0
		{"backstop_store_requests_total", map[string]string{"operation": "put_chunk", "result": "ok"}, float64(storedChunks)},
		{"backstop_store_request_duration_seconds", map[string]string{"operation": "put_chunk"}, float64(storedChunks)},
		{"backstop_tasks_total", map[string]string{"kind": "backup-disk", "state": "ok"}, 1},
		{"backstop_tasks_running", map[string]string{"kind": "backup-disk"}, 0},
		{"backstop_guest_last_backup_timestamp_seconds", vmid, float64(backupTime)},
		{"backstop_guest_last_backup_size_bytes", vmid, float64(snap.Size)},
		{"backstop_exports_active", nil, 0},
	}
	for _, ch := range checks {
		got := value(t, m, ch.name, ch.labels)
		if got != ch.want {
			t.Errorf("%s%v = %v, want %v", ch.name, ch.labels, got, ch.want)
		}
		t.Logf("%s%v = %v", ch.name, ch.labels, got)
	}
	afterBackup := m
	if storedChunks != 3 { // slots 0, 2 and 5; 3 is a duplicate, 1 and 4 are zero
		t.Errorf("bucket holds %d chunk objects, want 3", storedChunks)
	}
	if got := value(t, m, "backstop_db_pool_connections", map[string]string{"state": "idle"}) +
		value(t, m, "backstop_db_pool_connections", map[string]string{"state": "acquired"}); got < 1 {
		t.Errorf("catalog pool reports %v connections", got)
	}

	// Restore over HTTP: the bytes come back, read through the store.
	req, _ := http.NewRequest("GET", c.base+"/api/v1/snapshots/"+s.Name+"/disks/"+opsDevice+"/raw", nil)
	req.Header.Set("Authorization", "Bearer "+opsToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	_, err = io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("raw restore: %d %v", resp.StatusCode, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantSHA {
		t.Fatalf("restored image %s, want %s", got, wantSHA)
	}
	m = c.metrics()
	// Two distinct data chunks besides slot 0's copy; the cache may serve
	// the repeat, so at least 3 GETs and none failed.
	if got := value(t, m, "backstop_store_requests_total", map[string]string{"operation": "get_chunk", "result": "ok"}); got < 3 {
		t.Errorf("get_chunk requests after a restore: %v, want at least 3", got)
	}
	if got := value(t, m, "backstop_store_requests_total", map[string]string{"operation": "get_chunk", "result": "error"}); got != 0 {
		t.Errorf("%v failed get_chunk requests during the restore", got)
	}

	// Restore over NBD: the export shows while it exists.
	var e struct {
		ID  string `json:"id"`
		URI string `json:"uri"`
	}
	c.must("POST", "/api/v1/snapshots/"+s.Name+"/disks/"+opsDevice+"/exports", map[string]any{"ttl_seconds": 600}, http.StatusCreated, &e)
	if got := value(t, c.metrics(), "backstop_exports_active", nil); got != 1 {
		t.Errorf("active exports after creating one: %v, want 1", got)
	}
	out := filepath.Join(dir, "restored.raw")
	tool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", e.URI, out)
	if got := fileSHA(t, out); got != wantSHA {
		t.Fatalf("NBD restore %s, want %s", got, wantSHA)
	}
	c.must("DELETE", "/api/v1/exports/"+e.ID, nil, http.StatusNoContent, nil)
	m = c.metrics()
	if got := value(t, m, "backstop_exports_active", nil); got != 0 {
		t.Errorf("active exports after deleting it: %v, want 0", got)
	}
	if got := value(t, m, "backstop_exports_connections", nil); got != 0 {
		t.Errorf("export connections after the restore: %v, want 0", got)
	}
	// The pull read nothing more during the restores.
	if got := value(t, m, "backstop_nbd_read_bytes_total", nil); got != float64(dataBytes) {
		t.Errorf("NBD bytes read after the restores: %v, want %d", got, dataBytes)
	}

	// Verify, then delete the snapshot and collect: the runs count, and GC
	// frees exactly what the backup stored.
	waitTask := func(path string, body any) {
		t.Helper()
		var task struct {
			TaskID string `json:"task_id"`
		}
		c.must("POST", path, body, http.StatusAccepted, &task)
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
			var tv struct{ State, Error string }
			c.must("GET", "/api/v1/tasks/"+task.TaskID, nil, http.StatusOK, &tv)
			if tv.State == "ok" {
				return
			}
			if tv.State != "running" || time.Now().After(deadline) {
				t.Fatalf("%s task: %+v", path, tv)
			}
		}
	}
	waitTask("/api/v1/verify", map[string]any{})
	c.must("DELETE", "/api/v1/snapshots/"+s.Name, nil, http.StatusNoContent, nil)
	waitTask("/api/v1/gc", map[string]any{"grace_seconds": 0})
	m = c.metrics()
	if left, _ := chunkObjectBytes(t, bucketDir); left != 0 {
		t.Errorf("GC left %d bytes of chunks", left)
	}
	for _, ch := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"backstop_gc_freed_bytes_total", nil, float64(storedBytes)},
		{"backstop_gc_removed_total", nil, float64(storedChunks)},
		{"backstop_maintenance_runs_total", map[string]string{"kind": "gc", "result": "ok"}, 1},
		{"backstop_maintenance_runs_total", map[string]string{"kind": "gc", "result": "error"}, 0},
		{"backstop_maintenance_runs_total", map[string]string{"kind": "verify", "result": "ok"}, 1},
		{"backstop_maintenance_last_run_ok", map[string]string{"kind": "gc"}, 1},
		{"backstop_maintenance_last_run_ok", map[string]string{"kind": "verify"}, 1},
		{"backstop_verify_failed_snapshots_total", nil, 0},
		{"backstop_store_requests_total", map[string]string{"operation": "delete_chunks", "result": "ok"}, 1},
	} {
		if got := value(t, m, ch.name, ch.labels); got != ch.want {
			t.Errorf("%s%v = %v, want %v", ch.name, ch.labels, got, ch.want)
		}
	}
	t.Run("alert_rules", func(t *testing.T) { checkAlertRules(t, afterBackup, m) })
	t.Run("documented", func(t *testing.T) { checkDocumentedMetrics(t, afterBackup, m) })
}

// checkAlertRules checks that every metric the alert rules name is on
// /metrics (in one of the scrapes: after a backup, after GC and verify),
// with the labels they select on.
func checkAlertRules(t *testing.T, scrapes ...map[string]*dto.MetricFamily) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "prometheus", "backstop.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("rules: %v", err)
	}
	// name{label="value",…}: the selectors of an expression.
	selector := regexp.MustCompile(`(backstop_[a-z_]+)(\{([^}]*)\})?`)
	matcher := regexp.MustCompile(`([a-z_]+)="([^"]*)"`)
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			sels := selector.FindAllStringSubmatch(r.Expr, -1)
			if len(sels) == 0 {
				t.Errorf("alert %s names no backstop metric: %s", r.Alert, r.Expr)
			}
			for _, sel := range sels {
				labels := map[string]string{}
				for _, lm := range matcher.FindAllStringSubmatch(sel[3], -1) {
					labels[lm[1]] = lm[2]
				}
				found := false
				for _, m := range scrapes {
					_, ok := lookup(m, sel[1], labels)
					found = found || ok
				}
				if !found {
					t.Errorf("alert %s: no series %s%v on /metrics", r.Alert, sel[1], labels)
				}
			}
		}
	}
	for _, want := range []string{"BackstopBackupMissing", "BackstopGCFailed", "BackstopVerifyFailed"} {
		if !alerts[want] {
			t.Errorf("alert rules lack %s", want)
		}
	}
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkDocumentedMetrics checks that every metric docs/operations.md names
// is on /metrics, and that every backstop_* metric there is documented.
func checkDocumentedMetrics(t *testing.T, scrapes ...map[string]*dto.MetricFamily) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	names := regexp.MustCompile("`((?:backstop|http_server)_[a-z_]+|target_info)`").FindAllStringSubmatch(doc, -1)
	if len(names) < 20 {
		t.Fatalf("docs/operations.md names %d metrics", len(names))
	}
	for _, n := range names {
		found := false
		for _, m := range scrapes {
			found = found || m[n[1]] != nil
		}
		if !found {
			t.Errorf("docs/operations.md names %s, which is not on /metrics", n[1])
		}
	}
	for _, m := range scrapes {
		for name := range m {
			if strings.HasPrefix(name, "backstop_") && !strings.Contains(doc, "`"+name+"`") {
				t.Errorf("%s is on /metrics but not in docs/operations.md", name)
			}
		}
	}
}
