package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/backstop-pve/backstop/internal/catalog"
	"github.com/backstop-pve/backstop/internal/secret"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// The zero-config tests run the server as an admin trying Backstop does:
// the binary `go build ./cmd/server` makes, started in an empty directory
// with nothing in its environment but PATH and HOME.

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

// serverBinary builds ./cmd/server once for the package's tests.
func serverBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "backstop-bin-")
		if buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "server")
		out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// binProc is a server binary started by a test.
type binProc struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	done           chan struct{}
	api, nbd       string // from the banner
	token          string // the banner's admin token line, when it shows one
	fingerprint    string // the banner's certificate fingerprint, when it serves TLS
}

// bareEnv is the environment of a fresh shell: PATH and HOME only.
func bareEnv(home string, extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}, extra...)
}

// startBin starts bin in dir with env and the given arguments, without
// waiting for it to be ready. The test stops it by PID when it ends.
func startBin(t *testing.T, bin, dir string, env []string, args ...string) *binProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, env
	p := &binProc{cmd: cmd, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s stdout:\n%s\nstderr:\n%s", bin, p.stdout, p.stderr)
		}
	})
	return p
}

// stop ends the process with SIGTERM (SIGKILL after 30 s) and returns its
// exit code.
func (p *binProc) stop(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	default:
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		t.Errorf("server %d ignored SIGTERM for 30 s", p.cmd.Process.Pid)
	}
	return p.cmd.ProcessState.ExitCode()
}

// exitCode waits up to 30 s for the process to exit by itself.
func (p *binProc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		t.Fatalf("process %d still runs; it should have refused to start", p.cmd.Process.Pid)
		return -1
	}
}

var (
	bannerAPI   = regexp.MustCompile(`(?m)^\s*API:\s+(https?://\S+)/api/v1/$`)
	bannerNBD   = regexp.MustCompile(`(?m)^\s*NBD:\s+nbd://(\S+)$`)
	bannerToken = regexp.MustCompile(`(?m)^\s*(bst_[0-9a-f]{16}_[0-9a-f]{64})$`)
	bannerFP    = regexp.MustCompile(`(?m)^\s*Fingerprint \(SHA-256\):\n\s*((?:[0-9A-F]{2}:){31}[0-9A-F]{2})$`)
)

// waitBanner waits until the server printed where it listens.
func (p *binProc) waitBanner(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		out := p.stdout.String()
		if m := bannerAPI.FindStringSubmatch(out); m != nil {
			if n := bannerNBD.FindStringSubmatch(out); n != nil {
				p.api, p.nbd = m[1], n[1]
				if tm := bannerToken.FindStringSubmatch(out); tm != nil {
					p.token = tm[1]
				}
				if fm := bannerFP.FindStringSubmatch(out); fm != nil {
					p.fingerprint = fm[1]
				}
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("server exited (%v) before it was ready:\n%s\n%s", p.cmd.ProcessState, p.stdout, p.stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no banner after 60 s:\n%s\n%s", p.stdout, p.stderr)
}

func fileSHA256(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func wantMode(t *testing.T, name string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %04o, want %04o", name, got, want)
	}
}

// qemuNBDExport serves raw read-only as drive-scsi0 on a UNIX socket; it is
// stopped by PID when the test ends. It returns the export's URI.
func qemuNBDExport(t *testing.T, raw string) string {
	t.Helper()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "nbd.pid")
	sock := filepath.Join(dir, "nbd.sock")
	qemuTool(t, "qemu-nbd", "--fork", "--pid-file="+pidFile, "--persistent", "--shared=4", "--read-only",
		"-f", "raw", "-x", "drive-scsi0", "-k", sock, raw)
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	})
	return "nbd+unix:///drive-scsi0?socket=" + sock
}

// testDisk writes a 24 MiB raw disk: random data, a zero stretch and a
// repeated block, so dedup and zero detection both take part.
func testDisk(t *testing.T, dir string) string {
	t.Helper()
	raw := filepath.Join(dir, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	rnd, _ := os.Open("/dev/urandom")
	defer rnd.Close()
	block := make([]byte, 4<<20)
	if _, err := io.ReadFull(rnd, block); err != nil {
		t.Fatal(err)
	}
	for i, part := range [][]byte{block, make([]byte, 8<<20), block} {
		if _, err := f.Write(part); err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
	}
	if _, err := io.CopyN(f, rnd, 8<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return raw
}

// sha256Colons is a certificate's fingerprint as PVE and `openssl x509
// -fingerprint -sha256` write it (AA:BB:…), computed here on its own so
// that the server's formatting is checked, not reused.
func sha256Colons(der []byte) string {
	h := strings.ToUpper(hex.EncodeToString(sha256sum(der)))
	pairs := make([]string, 0, len(h)/2)
	for i := 0; i < len(h); i += 2 {
		pairs = append(pairs, h[i:i+2])
	}
	return strings.Join(pairs, ":")
}

func sha256sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// pemFingerprint is the fingerprint of the certificate in a PEM file.
func pemFingerprint(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no PEM certificate", name)
	}
	return sha256Colons(blk.Bytes)
}

// servedFingerprint is the fingerprint of the certificate a TLS server at
// url's host presents.
func servedFingerprint(t *testing.T, url string) string {
	t.Helper()
	host := strings.TrimPrefix(url, "https://")
	conn, err := tls.Dial("tcp", host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", host, err)
	}
	defer conn.Close()
	return sha256Colons(conn.ConnectionState().PeerCertificates[0].Raw)
}

// pinnedClient talks HTTPS only to a server whose certificate has the
// fingerprint fp, as the PVE plugin does.
func pinnedClient(fp string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || sha256Colons(raw[0]) != fp {
				return fmt.Errorf("server certificate does not have fingerprint %s", fp)
			}
			return nil
		},
	}
	return &http.Client{Transport: tr}
}

// checkCertificate checks the TLS side of a zero-config start: an https
// API whose served certificate is the one in data/tls, with the banner's
// fingerprint (checked against openssl's when it is installed), a key only
// its owner reads, and a pvesm command that pins it. It returns the
// fingerprint.
func checkCertificate(t *testing.T, p *binProc, data string) string {
	t.Helper()
	if !strings.HasPrefix(p.api, "https://") || p.fingerprint == "" {
		t.Fatalf("zero-config server does not serve HTTPS with a fingerprint:\n%s", p.stdout)
	}
	cert, key := filepath.Join(data, "tls", "cert.pem"), filepath.Join(data, "tls", "key.pem")
	wantMode(t, filepath.Join(data, "tls"), 0o700)
	wantMode(t, key, 0o600)
	if got := pemFingerprint(t, cert); got != p.fingerprint {
		t.Errorf("banner fingerprint %s, %s has %s", p.fingerprint, cert, got)
	}
	if got := servedFingerprint(t, p.api); got != p.fingerprint {
		t.Errorf("banner fingerprint %s, the server presents %s", p.fingerprint, got)
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command(openssl, "x509", "-noout", "-fingerprint", "-sha256", "-in", cert).Output()
		if err != nil {
			t.Fatalf("openssl x509: %v", err)
		}
		if _, fp, _ := strings.Cut(strings.TrimSpace(string(out)), "="); fp != p.fingerprint {
			t.Errorf("openssl says %s, the banner %s", fp, p.fingerprint)
		}
	}
	hostport := strings.TrimPrefix(p.api, "https://")
	host, port, _ := strings.Cut(hostport, ":")
	want := "pvesm add backstop backstop --server " + host + " --port " + port + " --fingerprint " + p.fingerprint + " --token "
	if !strings.Contains(p.stdout.String(), want) {
		t.Errorf("banner lacks %q:\n%s", want, p.stdout)
	}
	return p.fingerprint
}

// TestZeroConfig_RunCommand is the README's run command from an empty
// directory: the server makes backstop-data, generates a self-signed
// certificate, prints its https URLs, the certificate's fingerprint and a
// new admin token, takes a VM backup from a real qemu-nbd export over
// HTTPS pinned to that fingerprint and serves it back over NBD; `server
// healthcheck` probes it; a second server on the same directory refuses;
// `token create` and `migrate` work on the embedded catalog; a restart
// reuses the token (no longer printing it) and the certificate.
func TestZeroConfig_RunCommand(t *testing.T) {
	bin := serverBinary(t)
	testenv.Tool(t, testenv.PeerQEMU, "qemu-nbd")
	work, home := t.TempDir(), t.TempDir()
	env := bareEnv(home)
	listen := []string{"--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0"}
	srv := startBin(t, bin, work, env, listen...)
	srv.waitBanner(t)

	data := filepath.Join(work, "backstop-data")
	tokenFile := filepath.Join(data, "admin-token")
	wantMode(t, data, 0o700)
	wantMode(t, tokenFile, 0o600)
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(string(b))
	if !tokenFormat.MatchString(tok) || srv.token != tok {
		t.Fatalf("admin token file holds %q, the banner showed %q", tok, srv.token)
	}
	fp := checkCertificate(t, srv, data)
	if !strings.Contains(srv.stdout.String(), "generated now") {
		t.Errorf("the first start does not say it generated the certificate:\n%s", srv.stdout)
	}
	certSum := fileSHA256(t, filepath.Join(data, "tls", "cert.pem"))
	pc := pinnedClient(fp)
	call := func(t *testing.T, method, url, token string, body any, out any) int {
		t.Helper()
		return callWith(t, pc, method, url, token, body, out)
	}
	// Plain HTTP gets no API.
	plain := "http://" + strings.TrimPrefix(srv.api, "https://") + "/api/v1/status"
	if code := callWith(t, http.DefaultClient, "GET", plain, tok, nil, nil); code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the HTTPS port answered %d, want 400", code)
	}
	// A client pinned to another fingerprint is refused.
	other := pinnedClient(strings.Repeat("00:", 31) + "00")
	if _, err := other.Get(srv.api + "/healthz"); err == nil || !strings.Contains(err.Error(), "fingerprint") {
		t.Errorf("a client pinned to another fingerprint got through: %v", err)
	}
	// `server healthcheck` from the same environment finds the server and
	// accepts its self-signed certificate.
	hc := startBin(t, bin, work, bareEnv(home, "BACKSTOP_LISTEN="+strings.TrimPrefix(srv.api, "https://")), "healthcheck")
	if code := hc.exitCode(t); code != 0 || hc.stdout.String() == "" {
		t.Errorf("healthcheck: exit %d, stdout %q, stderr %s", code, hc.stdout, hc.stderr)
	}
	if !strings.Contains(srv.stdout.String(), "Dashboard: "+srv.api+"/\n") {
		t.Errorf("banner shows no dashboard URL:\n%s", srv.stdout)
	}
	for _, name := range []string{"catalog.db", "chunks", "lock"} {
		if _, err := os.Stat(filepath.Join(data, name)); err != nil {
			t.Errorf("data directory lacks %s: %v", name, err)
		}
	}
	if lock, _ := os.ReadFile(filepath.Join(data, "lock")); strings.TrimSpace(string(lock)) != strconv.Itoa(srv.cmd.Process.Pid) {
		t.Errorf("lock file holds %q, want the server's PID %d", lock, srv.cmd.Process.Pid)
	}

	// A VM backup from a real qemu-nbd export.
	raw := testDisk(t, t.TempDir())
	want := fileSHA256(t, raw)
	fi, _ := os.Stat(raw)
	uri := qemuNBDExport(t, raw)
	var sess struct{ ID, Name string }
	if code := call(t, "POST", srv.api+"/api/v1/backups", tok, map[string]any{
		"storage": "bs", "vmid": 100, "type": "qemu", "backup_time": 1764100000}, &sess); code != 201 {
		t.Fatalf("create backup: %d", code)
	}
	var task struct {
		TaskID string `json:"task_id"`
	}
	if code := call(t, "POST", srv.api+"/api/v1/backups/"+sess.ID+"/disks", tok, map[string]any{
		"device": "drive-scsi0", "size": fi.Size(), "bitmap_mode": "none",
		"source": map[string]any{"uri": uri}}, &task); code != 202 {
		t.Fatalf("start pull: %d", code)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var tv struct{ State, Error string }
		call(t, "GET", srv.api+"/api/v1/tasks/"+task.TaskID, tok, nil, &tv)
		if tv.State == "ok" {
			break
		}
		if tv.State != "running" || time.Now().After(deadline) {
			t.Fatalf("pull: %+v", tv)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := call(t, "POST", srv.api+"/api/v1/backups/"+sess.ID+"/commit", tok, nil, nil); code != 200 {
		t.Fatalf("commit: %d", code)
	}

	// Its restore through the server's NBD export, read by qemu-img.
	var export struct{ URI string }
	if code := call(t, "POST", srv.api+"/api/v1/snapshots/"+sess.Name+"/disks/drive-scsi0/exports", tok,
		map[string]any{}, &export); code != 201 {
		t.Fatalf("create export: %d", code)
	}
	if !strings.Contains(export.URI, srv.nbd) {
		t.Errorf("export URI %s is not on the NBD address the banner showed (%s)", export.URI, srv.nbd)
	}
	out := filepath.Join(t.TempDir(), "restored.raw")
	qemuTool(t, "qemu-img", "convert", "-f", "raw", export.URI, "-O", "raw", out)
	if got := fileSHA256(t, out); got != want {
		t.Fatalf("restored disk sha256 %s, backed up %s", got, want)
	}
	// The same export over NBD STARTTLS, trusting the generated certificate.
	caDir := t.TempDir()
	certPEM, err := os.ReadFile(filepath.Join(data, "tls", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caDir, "ca-cert.pem"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	eu, err := url.Parse(export.URI)
	if err != nil {
		t.Fatal(err)
	}
	outTLS := filepath.Join(t.TempDir(), "restored-tls.raw")
	qemuTool(t, "qemu-img", "convert", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+caDir,
		"--image-opts", fmt.Sprintf("driver=nbd,host=%s,port=%s,export=%s,tls-creds=tls0", eu.Hostname(), eu.Port(), strings.TrimPrefix(eu.Path, "/")),
		"-O", "raw", outTLS)
	if got := fileSHA256(t, outTLS); got != want {
		t.Fatalf("disk restored over NBD STARTTLS: sha256 %s, backed up %s", got, want)
	}

	// A second server on the same data directory refuses at once.
	second := startBin(t, bin, work, env, listen...)
	if code := second.exitCode(t); code == 0 {
		t.Fatal("a second server on the same data directory started")
	}
	msg := second.stderr.String()
	for _, want := range []string{data, "in use", "PID " + strconv.Itoa(srv.cmd.Process.Pid)} {
		if !strings.Contains(msg, want) {
			t.Errorf("second server's error does not say %q:\n%s", want, msg)
		}
	}

	// `token create` and `migrate` on the embedded catalog, next to the
	// running server.
	tc := startBin(t, bin, work, env, "token", "create", "--name", "ops", "--role", "read")
	if code := tc.exitCode(t); code != 0 {
		t.Fatalf("token create: exit %d\n%s", code, tc.stderr)
	}
	readTok := strings.TrimSpace(tc.stdout.String())
	var snaps []struct{ Name string }
	if code := call(t, "GET", srv.api+"/api/v1/snapshots", readTok, nil, &snaps); code != 200 || len(snaps) != 1 {
		t.Fatalf("snapshots with the created token: %d %v", code, snaps)
	}
	if m := startBin(t, bin, work, env, "migrate"); m.exitCode(t) != 0 {
		t.Fatalf("migrate: %s", m.stderr)
	}

	if code := srv.stop(t); code != 0 {
		t.Fatalf("server exited %d after SIGTERM", code)
	}

	// The next start reuses the token and prints only where it is.
	again := startBin(t, bin, work, env, listen...)
	again.waitBanner(t)
	if strings.Contains(again.stdout.String(), tok) || again.token != "" {
		t.Errorf("a later start printed the token:\n%s", again.stdout)
	}
	if !strings.Contains(again.stdout.String(), tokenFile) {
		t.Errorf("a later start does not say where the token is:\n%s", again.stdout)
	}
	if got := checkCertificate(t, again, data); got != fp {
		t.Errorf("the certificate changed on restart: fingerprint %s, was %s", got, fp)
	}
	if got := fileSHA256(t, filepath.Join(data, "tls", "cert.pem")); got != certSum || strings.Contains(again.stdout.String(), "generated now") {
		t.Errorf("a later start regenerated the certificate:\n%s", again.stdout)
	}
	wantMode(t, tokenFile, 0o600)
	if b, _ := os.ReadFile(tokenFile); strings.TrimSpace(string(b)) != tok {
		t.Errorf("the token file changed on restart")
	}
	snaps = nil
	if code := call(t, "GET", again.api+"/api/v1/snapshots", tok, nil, &snaps); code != 200 || len(snaps) != 1 || snaps[0].Name != sess.Name {
		t.Fatalf("snapshots after restart with the same token: %d %v", code, snaps)
	}
}

// TestZeroConfig_TLSOff: --tls=off serves plain HTTP (behind a proxy that
// terminates TLS) and makes no certificate; healthcheck follows
// BACKSTOP_TLS=off.
func TestZeroConfig_TLSOff(t *testing.T) {
	bin := serverBinary(t)
	work, home := t.TempDir(), t.TempDir()
	srv := startBin(t, bin, work, bareEnv(home), "--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0", "--tls=off")
	srv.waitBanner(t)
	if !strings.HasPrefix(srv.api, "http://") || srv.fingerprint != "" || !strings.Contains(srv.stdout.String(), "TLS:       off") {
		t.Fatalf("--tls=off banner:\n%s", srv.stdout)
	}
	if strings.Contains(srv.stdout.String(), "pvesm add") {
		t.Errorf("--tls=off banner offers a pvesm command PVE cannot use:\n%s", srv.stdout)
	}
	if _, err := os.Stat(filepath.Join(work, "backstop-data", "tls")); !os.IsNotExist(err) {
		t.Errorf("--tls=off made a certificate directory: %v", err)
	}
	var snaps []struct{ Name string }
	if code := call(t, "GET", srv.api+"/api/v1/snapshots", srv.token, nil, &snaps); code != 200 {
		t.Fatalf("snapshots over plain HTTP: %d", code)
	}
	hc := startBin(t, bin, work, bareEnv(home, "BACKSTOP_TLS=off", "BACKSTOP_LISTEN="+strings.TrimPrefix(srv.api, "http://")), "healthcheck")
	if code := hc.exitCode(t); code != 0 {
		t.Errorf("healthcheck with BACKSTOP_TLS=off: exit %d\n%s", code, hc.stderr)
	}
}

// TestZeroConfig_OwnCertificate: with BACKSTOP_TLS_CERT/KEY the data
// directory server serves that certificate, shows its fingerprint and
// generates none.
func TestZeroConfig_OwnCertificate(t *testing.T) {
	bin := serverBinary(t)
	work, home := t.TempDir(), t.TempDir()
	certPEM, keyPEM, err := newSelfSigned([]string{"backstop.test", "127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(home, "cert.pem"), filepath.Join(home, "key.pem")
	if err := os.WriteFile(cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startBin(t, bin, work, bareEnv(home, "BACKSTOP_TLS_CERT="+cert, "BACKSTOP_TLS_KEY="+key),
		"--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0")
	srv.waitBanner(t)
	want := pemFingerprint(t, cert)
	if srv.fingerprint != want || servedFingerprint(t, srv.api) != want {
		t.Fatalf("banner fingerprint %q, file %s, served %s:\n%s", srv.fingerprint, want, servedFingerprint(t, srv.api), srv.stdout)
	}
	if strings.Contains(srv.stdout.String(), "self-signed") {
		t.Errorf("the banner calls a given certificate self-signed:\n%s", srv.stdout)
	}
	if _, err := os.Stat(filepath.Join(work, "backstop-data", "tls")); !os.IsNotExist(err) {
		t.Errorf("a certificate was generated although one is configured: %v", err)
	}
	if code := callWith(t, pinnedClient(want), "GET", srv.api+"/api/v1/snapshots", srv.token, nil, nil); code != 200 {
		t.Errorf("snapshots over the given certificate: %d", code)
	}
}

// TestZeroConfig_DataDirNotUsable: a data directory the server cannot make
// or write refuses the start with a message naming it. The test runs as
// root, which no file mode stops, so the paths fail for real: one under a
// regular file, and a regular file itself.
func TestZeroConfig_DataDirNotUsable(t *testing.T) {
	bin := serverBinary(t)
	work := t.TempDir()
	file := filepath.Join(work, "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(file, "data"), file} {
		p := startBin(t, bin, work, bareEnv(work, "BACKSTOP_DATA_DIR="+dir), "--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0")
		if code := p.exitCode(t); code == 0 {
			t.Fatalf("server started on data directory %s", dir)
		}
		msg := p.stderr.String()
		if !strings.Contains(msg, "data directory "+dir) || !strings.Contains(msg, "BACKSTOP_DATA_DIR") {
			t.Errorf("error for %s does not name it and the setting:\n%s", dir, msg)
		}
	}
}

// TestMigrateCatalog_ZeroConfig: `server migrate-catalog` with only
// BACKSTOP_DATABASE_URL set finds the catalog a zero-config server made in
// ./backstop-data, and `token create` writes there with nothing set.
func TestMigrateCatalog_ZeroConfig(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	t.Chdir(t.TempDir())
	ctx := t.Context()
	none := func(string) string { return "" }
	var out bytes.Buffer
	if err := run(ctx, []string{"token", "create", "--name", "zc", "--role", "read", "--json"}, none, &out, io.Discard); err != nil {
		t.Fatalf("token create with nothing configured: %v", err)
	}
	if _, err := os.Stat(filepath.Join("backstop-data", "catalog.db")); err != nil {
		t.Fatalf("token create made no embedded catalog: %v", err)
	}
	out.Reset()
	var errOut bytes.Buffer
	env := func(k string) string {
		if k == "BACKSTOP_DATABASE_URL" {
			return dsn
		}
		return ""
	}
	// While a server holds the data directory, the copy is refused.
	held, err := lockDataDir("backstop-data")
	if err != nil {
		t.Fatal(err)
	}
	err = run(ctx, []string{"migrate-catalog"}, env, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "stop the server first") || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("migrate-catalog next to a running server: %v; want a refusal naming the server", err)
	}
	held.Close()
	if err := run(ctx, []string{"migrate-catalog"}, env, &out, &errOut); err != nil {
		t.Fatalf("migrate-catalog: %v\n%s", err, errOut.String())
	}
	pg, err := catalog.Open(ctx, catalog.DefaultConfig(secret.String(dsn)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	toks, err := pg.ListTokens(ctx)
	if err != nil || len(toks) != 1 || toks[0].Name != "zc" {
		t.Fatalf("Postgres tokens after migrate-catalog: %v %v\n%s", toks, err, out.String())
	}
}
