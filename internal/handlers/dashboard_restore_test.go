package handlers_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/klauspost/compress/zstd"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// openSnapshot shows a snapshot's page and waits for sel on it.
func openSnapshot(t *testing.T, ctx context.Context, name, sel string) {
	t.Helper()
	eval[string](t, ctx, fmt.Sprintf(`location.hash = "#/snapshot/%s"`, name))
	ui(t, ctx, "open snapshot "+name, chromedp.WaitVisible(chromedp.CSS(sel)))
}

// waitText waits until the element's text contains want and returns it.
func waitText(t *testing.T, ctx context.Context, sel, want string) string {
	t.Helper()
	expr := fmt.Sprintf(`(document.querySelector(%q)?.textContent ?? "").includes(%q)`, sel, want)
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(tctx, chromedp.Poll[bool](expr)); err != nil {
		t.Fatalf("%s never said %q (now %q): %v", sel, want, eval[string](t, ctx, fmt.Sprintf(`document.querySelector(%q)?.textContent ?? "(absent)"`, sel)), err)
	}
	return textOf(t, ctx, sel)
}

// evalAwait evaluates an expression whose value is a promise.
func evalAwait[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func exportIDs(t *testing.T, s *testServer, token string) []string {
	t.Helper()
	r := s.do("GET", "/api/v1/exports", token, "", nil)
	wantStatus(t, r, http.StatusOK)
	var list []struct{ ID string }
	r.json(t, &list)
	ids := make([]string, len(list))
	for i, e := range list {
		ids[i] = e.ID
	}
	return ids
}

type snapMeta struct {
	Notes     string
	Protected bool
}

func getSnapMeta(t *testing.T, s *testServer, token, name string) snapMeta {
	t.Helper()
	r := s.do("GET", "/api/v1/snapshots/"+name, token, "", nil)
	wantStatus(t, r, http.StatusOK)
	var m snapMeta
	r.json(t, &m)
	return m
}

// TestDashboard_Restore drives the snapshot page's restore and management
// actions in headless Chromium against a real server: a VM disk backed up
// from qemu-nbd is exported from the page and read back with qemu-img,
// downloaded through the in-memory fallback and through the streaming path,
// refused (with the curl alternative) when too large for memory; notes and
// protection are edited, a protected snapshot's deletion is refused, and a
// container's archive is downloaded.
func TestDashboard_Restore(t *testing.T) {
	testenv.Tool(t, testenv.PeerQEMU, "qemu-img")
	s := newTestServer(t)
	ctx := newBrowser(t)
	shots := testenv.ArtifactsDir(t)
	bk := s.mustToken(backup.RoleBackup)
	read := s.mustToken(backup.RoleRead)
	vm, want := s.backedUpDisk(bk, 150, 2, 4096) // 8 MiB of random, zero and repeated data, and a tail
	sum := sha256.Sum256(want)
	wantSHA := hex.EncodeToString(sum[:])
	ctDir := t.TempDir()
	const ctFile = "srv/it's data.bin" // a quote for the shell command to get right
	ctData := bytes.Repeat([]byte("data 250\n"), 40000)
	for p, b := range map[string][]byte{"etc/hostname": []byte("ct250\n"), ctFile: ctData} {
		if err := os.MkdirAll(filepath.Join(ctDir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctDir, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctStream := pveTar(t, ctDir)
	ct, _ := s.containerBackup(bk, 250, time.Now().Unix()-3600, ctStream)
	dl := t.TempDir()
	rawFile := vm + ".drive-scsi0.raw"

	t.Run("read token is told that restoring needs role backup", func(t *testing.T) {
		login(t, ctx, s.url, read)
		openSnapshot(t, ctx, vm, "#disks")
		note := waitText(t, ctx, "#restore-role", "role backup")
		if !strings.Contains(note, "refused") {
			t.Errorf("role note %q; want the API's refusal", note)
		}
		if !eval[bool](t, ctx, `[...document.querySelectorAll("#disks button")].every(b => b.disabled)`) {
			t.Error("restore buttons enabled for a read token")
		}
		ui(t, ctx, "save notes", chromedp.SetValue(chromedp.CSS(`#meta-form textarea`), "from a read token"),
			chromedp.Click(chromedp.CSS(`#meta-form button[type="submit"]`)))
		if got := waitText(t, ctx, "#meta-status", "Not saved"); !strings.Contains(got, "403") || !strings.Contains(got, "role") {
			t.Errorf("meta status %q; want the 403 and its detail", got)
		}
		screenshot(t, ctx, shots, "01-read-token")
		if m := getSnapMeta(t, s, bk, vm); m.Notes != "" {
			t.Errorf("notes %q set by a read token", m.Notes)
		}
		logout(t, ctx)
	})

	login(t, ctx, s.url, bk)
	if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dl,
	}); err != nil {
		t.Fatalf("allow downloads: %v", err)
	}

	t.Run("an NBD export made on the page restores the disk with qemu-img", func(t *testing.T) {
		openSnapshot(t, ctx, vm, "#disks")
		ui(t, ctx, "create export",
			chromedp.WaitVisible(chromedp.CSS("#exports")),
			chromedp.SetValue(chromedp.CSS(`#disks select[name="ttl"]`), "3600"),
			chromedp.Click(chromedp.CSS(`button.create-export[data-device="drive-scsi0"]`)),
			chromedp.WaitVisible(chromedp.ID("export-uri")),
			chromedp.WaitVisible(chromedp.CSS("#exports tr[data-id]")),
		)
		uri := textOf(t, ctx, "#export-uri")
		if !strings.HasPrefix(uri, "nbd://127.0.0.1:") {
			t.Fatalf("export URI %q", uri)
		}
		if cmd := textOf(t, ctx, "#export-command"); cmd != "qemu-img convert -p -f raw "+uri+" -O qcow2 drive-scsi0.qcow2" {
			t.Errorf("command %q", cmd)
		}
		exp, err := time.Parse("2006-01-02 15:04:05 UTC", textOf(t, ctx, "#export-expires"))
		if d := time.Until(exp); err != nil || d < 55*time.Minute || d > 61*time.Minute {
			t.Errorf("export expires %v (in %v, %v); want the 1 hour chosen", exp, d, err)
		}
		screenshot(t, ctx, shots, "02-export")
		ui(t, ctx, "phone-sized screen", chromedp.EmulateViewport(390, 844))
		if over := eval[int](t, ctx, `document.documentElement.scrollWidth - document.documentElement.clientWidth`); over > 0 {
			t.Errorf("the snapshot page is %d px wider than a 390 px screen", over)
		}
		screenshot(t, ctx, shots, "02-export-narrow")
		ui(t, ctx, "desktop screen", chromedp.EmulateViewport(1280, 900))
		out := filepath.Join(t.TempDir(), "out.raw")
		runTool(t, "qemu-img", "convert", "-f", "raw", uri, out)
		if got := fileSHA(t, out); got != wantSHA {
			t.Fatalf("qemu-img convert from the page's URI: sha256 %s, want %s", got, wantSHA)
		}
		ids := exportIDs(t, s, bk)
		rowID := eval[string](t, ctx, `document.querySelector("#exports tr[data-id]").dataset.id`)
		if len(ids) != 1 || ids[0] != rowID {
			t.Fatalf("API lists exports %v, page %q", ids, rowID)
		}
		ui(t, ctx, "delete export", chromedp.Click(chromedp.ID("export-delete")), chromedp.WaitVisible(chromedp.ID("export-deleted")))
		waitText(t, ctx, "#exports", "No active exports")
		if ids := exportIDs(t, s, bk); len(ids) != 0 {
			t.Errorf("after deleting on the page the API lists exports %v", ids)
		}
		if out, err := toolOutput(t, "qemu-img", "info", uri); err == nil {
			t.Errorf("the deleted export still answers:\n%s", out)
		}
	})

	t.Run("raw image download without the File System Access API goes through a blob", func(t *testing.T) {
		eval[bool](t, ctx, `window.showSaveFilePicker = undefined; true`)
		ui(t, ctx, "download raw", chromedp.Click(chromedp.ID("download-drive-scsi0")))
		got := waitFile(t, filepath.Join(dl, rawFile))
		if !bytes.Equal(got, want) {
			t.Fatalf("downloaded %d bytes, want the disk's %d bytes", len(got), len(want))
		}
		waitText(t, ctx, "#download-drive-scsi0-status", "Downloaded "+rawFile)
	})

	t.Run("too large for memory the page offers the export and an exact curl command", func(t *testing.T) {
		evalAwait[bool](t, ctx, `import("/ui/restore.js").then(m => { m.limits.blobBytes = 1 << 20; return true; })`)
		ui(t, ctx, "download raw", chromedp.Click(chromedp.ID("download-drive-scsi0")))
		msg := waitText(t, ctx, "#download-drive-scsi0-status", "too large")
		if !strings.Contains(msg, "NBD export") || strings.Contains(msg, bk) {
			t.Errorf("message %q; want the export suggested and no token", msg)
		}
		screenshot(t, ctx, shots, "03-too-large")
		cmd := textOf(t, ctx, "#download-drive-scsi0-status code.cmd")
		if !strings.Contains(cmd, `-H "Authorization: Bearer $TOKEN"`) {
			t.Fatalf("curl command %q lacks the token placeholder", cmd)
		}
		dir := t.TempDir()
		c := exec.Command("sh", "-c", cmd)
		c.Dir, c.Env = dir, append(os.Environ(), "TOKEN="+bk)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		if got := fileSHA(t, filepath.Join(dir, rawFile)); got != wantSHA {
			t.Errorf("the curl command shown got sha256 %s, want %s", got, wantSHA)
		}
		evalAwait[bool](t, ctx, `import("/ui/restore.js").then(m => { m.limits.blobBytes = 256 << 20; return true; })`)
	})

	t.Run("with showSaveFilePicker the image streams into the chosen file", func(t *testing.T) {
		// Headless Chromium cannot answer a save dialog; the stub stands in
		// for the dialog only and hands the page a real file handle (in the
		// origin-private file system), which the page streams into.
		eval[bool](t, ctx, `window.showSaveFilePicker = async (o) => {
			window.suggested = o.suggestedName;
			const dir = await navigator.storage.getDirectory();
			return dir.getFileHandle("picked.raw", { create: true });
		}; true`)
		ui(t, ctx, "download raw", chromedp.Click(chromedp.ID("download-drive-scsi0")))
		waitText(t, ctx, "#download-drive-scsi0-status", "streamed to disk")
		if got := eval[string](t, ctx, `window.suggested`); got != rawFile {
			t.Errorf("suggested name %q, want %q", got, rawFile)
		}
		got := evalAwait[string](t, ctx, `(async () => {
			const f = await (await (await navigator.storage.getDirectory()).getFileHandle("picked.raw")).getFile();
			const d = await crypto.subtle.digest("SHA-256", await f.arrayBuffer());
			return [...new Uint8Array(d)].map(b => b.toString(16).padStart(2, "0")).join("");
		})()`)
		if got != wantSHA {
			t.Errorf("streamed file sha256 %s, want %s", got, wantSHA)
		}
		eval[bool](t, ctx, `window.showSaveFilePicker = undefined; true`)
	})

	t.Run("notes and protection are saved through the API", func(t *testing.T) {
		ui(t, ctx, "edit", chromedp.SetValue(chromedp.CSS(`#meta-form textarea`), "before the upgrade\nkeep for audit"),
			chromedp.Click(chromedp.ID("meta-protected")),
			chromedp.Click(chromedp.CSS(`#meta-form button[type="submit"]`)))
		waitText(t, ctx, "#meta-status", "Saved: protected")
		if m := getSnapMeta(t, s, read, vm); m.Notes != "before the upgrade\nkeep for audit" || !m.Protected {
			t.Errorf("API has %+v after saving", m)
		}
		if got := textOf(t, ctx, "#snap-protected"); got != "protected" {
			t.Errorf("details say protected %q", got)
		}
	})

	t.Run("deleting a protected snapshot is refused and says why", func(t *testing.T) {
		ui(t, ctx, "ask to delete", chromedp.Click(chromedp.ID("delete-snapshot")), chromedp.WaitVisible(chromedp.ID("delete-dialog")))
		if got := textOf(t, ctx, "#delete-dialog"); !strings.Contains(got, "Delete snapshot "+vm+"?") || !strings.Contains(got, "protected") {
			t.Errorf("confirmation %q; want the snapshot's name and the protection", got)
		}
		screenshot(t, ctx, shots, "04-delete-confirm")
		ui(t, ctx, "confirm", chromedp.Click(chromedp.ID("delete-confirm")))
		if got := waitText(t, ctx, "#delete-status", "Refused"); !strings.Contains(got, "409") || !strings.Contains(got, "protected") {
			t.Errorf("delete status %q; want the 409 and its detail", got)
		}
		screenshot(t, ctx, shots, "05-delete-refused")
		getSnapMeta(t, s, read, vm) // still there
	})

	t.Run("unprotected, the snapshot is deleted after the confirmation", func(t *testing.T) {
		ui(t, ctx, "unprotect", chromedp.Click(chromedp.ID("meta-protected")),
			chromedp.Click(chromedp.CSS(`#meta-form button[type="submit"]`)))
		waitText(t, ctx, "#meta-status", "Saved: not protected")
		ui(t, ctx, "cancel", chromedp.Click(chromedp.ID("delete-snapshot")), chromedp.WaitVisible(chromedp.ID("delete-dialog")),
			chromedp.Click(chromedp.Search(`//dialog[@id="delete-dialog"]//button[text()="Cancel"]`)))
		getSnapMeta(t, s, read, vm) // Cancel deleted nothing
		ui(t, ctx, "delete", chromedp.Click(chromedp.ID("delete-snapshot")), chromedp.WaitVisible(chromedp.ID("delete-dialog")),
			chromedp.Click(chromedp.ID("delete-confirm")), chromedp.WaitVisible(chromedp.ID("flash")))
		if got := textOf(t, ctx, "#flash"); !strings.Contains(got, vm) {
			t.Errorf("flash %q", got)
		}
		wantStatus(t, s.do("GET", "/api/v1/snapshots/"+vm, read, "", nil), http.StatusNotFound)
	})

	t.Run("a container's archive downloads as .tar.zst", func(t *testing.T) {
		openSnapshot(t, ctx, ct.Name, "#file-list")
		screenshot(t, ctx, shots, "06-container")
		ui(t, ctx, "download archive", chromedp.Click(chromedp.ID("download-archive")))
		got := waitFile(t, filepath.Join(dl, ct.Name+".tar.zst"))
		dec, err := zstd.NewReader(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer dec.Close()
		tarBytes, err := dec.DecodeAll(got, nil)
		if err != nil || !bytes.Equal(tarBytes, ctStream) {
			t.Errorf("archive: %d bytes decompressed (%v), want the %d-byte tar stream", len(tarBytes), err, len(ctStream))
		}
		waitText(t, ctx, "#download-archive-status", "Downloaded "+ct.Name+".tar.zst")
	})

	t.Run("a container file too large for memory comes with a curl command that quotes its name", func(t *testing.T) {
		evalAwait[bool](t, ctx, `import("/ui/restore.js").then(m => { m.limits.blobBytes = 64 << 10; return true; })`)
		ui(t, ctx, "download the file",
			chromedp.Click(chromedp.Search(`//table[@id="file-list"]//button[text()="srv/"]`)),
			chromedp.Click(chromedp.CSS(`button[data-path="/srv/it's data.bin"]`)))
		msg := waitText(t, ctx, "#download-status", "too large")
		if !strings.Contains(msg, "/srv/it's data.bin is 351.6 KiB") {
			t.Errorf("message %q; want the path and size", msg)
		}
		screenshot(t, ctx, shots, "07-file-too-large")
		cmd := textOf(t, ctx, "#download-status code.cmd")
		dir := t.TempDir()
		c := exec.Command("sh", "-c", cmd)
		c.Dir, c.Env = dir, append(os.Environ(), "TOKEN="+bk)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		if got, err := os.ReadFile(filepath.Join(dir, "it's data.bin")); err != nil || !bytes.Equal(got, ctData) {
			t.Errorf("the curl command shown got %d bytes (%v), want the file's %d", len(got), err, len(ctData))
		}
	})
}
