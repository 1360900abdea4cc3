package handlers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/testenv"
)

// newBrowser starts headless Chromium with a fresh profile and returns a
// tab context. Any exception or error the page logs (a CSP refusal
// included) fails the test; refused API calls (401/403 network errors)
// are expected and ignored. The browser is stopped when the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	exe := testenv.Chromium(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		cancelTab()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	var pageErrors []string
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError && m.Source != "network" {
				pageErrors = append(pageErrors, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1))
			}
		}
	}()
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // kills the browser and waits for it
		<-done
		for _, m := range pageErrors {
			t.Errorf("page error: %s", m)
		}
	})
	return ctx
}

// ui runs browser steps, bounded in time, and fails the test with what was
// being done.
func ui(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot saves the whole page as a PNG artifact.
func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", p)
}

func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("read %s: %v", sel, err)
	}
	return s
}

// login types the token and presses Enter, as a keyboard user would.
func login(t *testing.T, ctx context.Context, url, token string) {
	t.Helper()
	ui(t, ctx, "log in",
		chromedp.Navigate(url+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token+"\r"),
		chromedp.WaitVisible(chromedp.ID("recent-runs")),
	)
}

func logout(t *testing.T, ctx context.Context) {
	t.Helper()
	ui(t, ctx, "log out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("token")))
}

// dashboardData backs up, through the API: guest 200 twice (a container,
// real GNU tar streams, the file to download inside), guest 300 once three
// days ago (so it has no backup in 26 h), and a failed run of guest 400.
type dashboardData struct {
	snaps200  []string // newest first
	fileBytes []byte   // /etc/app.conf in guest 200's snapshots
	failure   string
}

func makeDashboardData(t *testing.T, s *testServer, bk string) dashboardData {
	t.Helper()
	now := time.Now().Unix()
	var d dashboardData
	d.fileBytes = []byte("listen = 0.0.0.0:8080\nsecret = \x00\x01\x02 binary too\n" + strings.Repeat("line of config\n", 300))
	tree := func(extra string) []byte {
		dir := t.TempDir()
		for p, b := range map[string][]byte{
			"etc/app.conf":      d.fileBytes,
			"etc/hostname":      []byte("ct200\n"),
			"var/log/app.log":   bytes.Repeat([]byte("log "+extra+"\n"), 2000),
			"usr/share/doc/txt": bytes.Repeat([]byte("doc\n"), 5000),
		} {
			if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, p), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return pveTar(t, dir)
	}
	s.containerBackup(bk, 300, now-72*3600, tree("old"))
	first, _ := s.containerBackup(bk, 200, now-5*3600, tree("first"))
	second, _ := s.containerBackup(bk, 200, now-2*3600, tree("second"))
	d.snaps200 = []string{second.Name, first.Name}

	d.failure = "tar: ./var/lib/db: file changed as we read it"
	f := s.openBackup(bk, 400, "lxc", now-30*60)
	wantStatus(t, s.doJSON("POST", "/api/v1/backups/"+f.ID+"/finish", bk,
		map[string]any{"success": false, "error": d.failure}), http.StatusOK)
	return d
}

// TestDashboard_Browser drives the dashboard in headless Chromium against a
// real server (Postgres catalog, chunk store) holding real backups.
func TestDashboard_Browser(t *testing.T) {
	s := newTestServer(t)
	ctx := newBrowser(t)
	shots := testenv.ArtifactsDir(t)
	bk := s.mustToken(backup.RoleBackup)
	read := s.mustToken(backup.RoleRead)
	d := makeDashboardData(t, s, bk)
	s.status.Refresh(t.Context()) // as the server's refresher would

	t.Run("wrong token is refused", func(t *testing.T) {
		ui(t, ctx, "submit a wrong token",
			chromedp.Navigate(s.url+"/"),
			chromedp.WaitVisible(chromedp.ID("token")),
			chromedp.SendKeys(chromedp.ID("token"), "bst_0123456789abcdef_"+strings.Repeat("cd", 32)),
			chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.ID("login-error")),
		)
		if got := textOf(t, ctx, "#login-error"); !strings.Contains(got, "Token refused") || !strings.Contains(got, "invalid") {
			t.Errorf("login error %q; want the refusal and the API's detail", got)
		}
		if eval[bool](t, ctx, `document.getElementById("nav").checkVisibility() || document.getElementById("session").checkVisibility()`) {
			t.Error("navigation or log-out shown after a refused token")
		}
		screenshot(t, ctx, shots, "01-login-refused")
	})

	t.Run("read token sees the failed backup and the guest without backups", func(t *testing.T) {
		login(t, ctx, s.url, read)
		ui(t, ctx, "wait for the chart", chromedp.WaitVisible(chromedp.ID("usage-chart")))
		screenshot(t, ctx, shots, "02-overview")
		first := textOf(t, ctx, "#recent-runs tbody tr:first-child")
		if !strings.Contains(first, "failed") || !strings.Contains(first, "400") || !strings.Contains(first, d.failure) {
			t.Errorf("first run row %q; want guest 400's failure with its error, failures first", first)
		}
		failedRows := eval[int](t, ctx, `document.querySelectorAll("#recent-runs tr.failed").length`)
		if failedRows != 1 {
			t.Errorf("%d failed rows, want 1", failedRows)
		}
		if got := eval[string](t, ctx, `document.getElementById("failed-summary")?.textContent ?? "(none)"`); !strings.Contains(got, "1 failed backup") {
			t.Errorf("failure summary %q", got)
		}
		missing := textOf(t, ctx, "#missing-guests tbody")
		if !strings.Contains(missing, "300") || strings.Contains(missing, "200") {
			t.Errorf("guests without a backup in 26 h: %q; want 300 and not 200", missing)
		}
		if got := textOf(t, ctx, "#repo-cards"); !strings.Contains(got, "Snapshots\n3") && !strings.Contains(got, "Snapshots3") {
			t.Errorf("repository cards %q; want 3 snapshots", got)
		}
		if eval[bool](t, ctx, `document.getElementById("nav-tokens").checkVisibility()`) {
			t.Error("API tokens page offered to a read token")
		}
	})

	t.Run("snapshots of a guest", func(t *testing.T) {
		ui(t, ctx, "open guests", chromedp.Click(chromedp.CSS(`a[data-page="guests"]`)), chromedp.WaitVisible(chromedp.ID("guests")))
		ui(t, ctx, "open guest 200", chromedp.Click(chromedp.CSS(`#guests a[href="#/guest/200"]`)), chromedp.WaitVisible(chromedp.ID("snapshots")))
		names := eval[[]string](t, ctx, `[...document.querySelectorAll("#snapshots tbody tr td:first-child")].map(td => td.textContent)`)
		if strings.Join(names, ",") != strings.Join(d.snaps200, ",") {
			t.Errorf("guest 200 snapshots %v, want %v", names, d.snaps200)
		}
		exclusive := eval[[]string](t, ctx, `[...document.querySelectorAll("#snapshots tbody tr td:nth-child(5)")].map(td => td.textContent)`)
		for i, e := range exclusive {
			if !strings.HasSuffix(e, "B") {
				t.Errorf("snapshot %d: exclusive bytes %q, want a size", i, e)
			}
		}
		screenshot(t, ctx, shots, "03-guest")
	})

	t.Run("read token cannot download and is told why", func(t *testing.T) {
		openFile(t, ctx, d.snaps200[0])
		ui(t, ctx, "download", chromedp.Click(chromedp.CSS(`button[data-path="/etc/app.conf"]`)),
			chromedp.WaitVisible(chromedp.CSS("#download-status.error")))
		if got := textOf(t, ctx, "#download-status"); !strings.Contains(got, "403") || !strings.Contains(got, "role") {
			t.Errorf("download status %q; want the 403 and its detail", got)
		}
		logout(t, ctx)
	})

	t.Run("admin downloads one file from a container snapshot", func(t *testing.T) {
		dl := t.TempDir()
		login(t, ctx, s.url, adminToken)
		if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dl,
		}); err != nil {
			t.Fatalf("allow downloads: %v", err)
		}
		openFile(t, ctx, d.snaps200[0])
		screenshot(t, ctx, shots, "04-files")
		ui(t, ctx, "download", chromedp.Click(chromedp.CSS(`button[data-path="/etc/app.conf"]`)))
		got := waitFile(t, filepath.Join(dl, "app.conf"))
		if !bytes.Equal(got, d.fileBytes) {
			t.Errorf("downloaded %d bytes, want the original %d bytes", len(got), len(d.fileBytes))
		}
		if st := textOf(t, ctx, "#download-status"); !strings.Contains(st, "Downloaded /etc/app.conf") {
			t.Errorf("download status %q", st)
		}
	})

	t.Run("prune dry run shows its marks and deletes nothing", func(t *testing.T) {
		ui(t, ctx, "open maintenance",
			chromedp.Click(chromedp.CSS(`a[data-page="maintenance"]`)),
			chromedp.WaitVisible(chromedp.ID("prune-form")),
			chromedp.SetValue(chromedp.CSS(`#prune-form input[name="vmid"]`), "200"),
			chromedp.SetValue(chromedp.CSS(`#prune-form input[name="keep-last"]`), "1"),
			chromedp.Click(chromedp.CSS(`#prune-form button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.ID("prune-marks")),
		)
		marks := eval[map[string]string](t, ctx, `Object.fromEntries([...document.querySelectorAll("#prune-marks tbody tr")].map(tr => [tr.cells[0].textContent, tr.cells[1].textContent]))`)
		want := map[string]string{d.snaps200[0]: "keep", d.snaps200[1]: "remove"}
		if fmt.Sprint(marks) != fmt.Sprint(want) {
			t.Errorf("prune marks %v, want %v", marks, want)
		}
		screenshot(t, ctx, shots, "05-prune")
		r := s.do("GET", "/api/v1/snapshots?vmid=200", read, "", nil)
		wantStatus(t, r, http.StatusOK)
		var list []struct{ Name string }
		r.json(t, &list)
		if len(list) != 2 {
			t.Errorf("after a dry run guest 200 has %d snapshots, want 2", len(list))
		}
	})

	testDashboardAdmin(t, ctx, s, shots)
}

func testDashboardAdmin(t *testing.T, ctx context.Context, s *testServer, shots string) {
	t.Run("admin verifies and follows the task", func(t *testing.T) {
		ui(t, ctx, "start verify",
			chromedp.Click(chromedp.CSS(`#verify-form button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.CSS(`#maintenance-task .task-watch .badge.ok`)),
		)
		screenshot(t, ctx, shots, "06-verify")
		ui(t, ctx, "open tasks", chromedp.Click(chromedp.CSS(`a[data-page="tasks"]`)), chromedp.WaitVisible(chromedp.ID("tasks")))
		if got := textOf(t, ctx, "#tasks tbody"); !strings.Contains(got, "verify") {
			t.Errorf("task list %q lacks the verify task", got)
		}
		screenshot(t, ctx, shots, "07-tasks")
	})

	t.Run("admin creates a token that works", func(t *testing.T) {
		ui(t, ctx, "create token",
			chromedp.Click(chromedp.ID("nav-tokens")),
			chromedp.WaitVisible(chromedp.ID("token-form")),
			chromedp.SendKeys(chromedp.CSS(`#token-form input[name="name"]`), "report reader"),
			chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.CSS("#token-created .secret")),
		)
		bearer := textOf(t, ctx, "#token-created .secret")
		wantStatus(t, s.do("GET", "/api/v1/snapshots", bearer, "", nil), http.StatusOK)
		wantProblem(t, s.do("GET", "/api/v1/tokens", bearer, "", nil), http.StatusForbidden, "forbidden")
		if got := textOf(t, ctx, "#tokens tbody"); !strings.Contains(got, "report reader") {
			t.Errorf("token list %q lacks the new token", got)
		}
		screenshot(t, ctx, shots, "08-tokens")
	})

	t.Run("narrow screen has no page-wide horizontal scrolling", func(t *testing.T) {
		ui(t, ctx, "phone-sized overview",
			chromedp.EmulateViewport(390, 844),
			chromedp.Click(chromedp.CSS(`a[data-page="overview"]`)),
			chromedp.WaitVisible(chromedp.ID("usage-chart")),
		)
		if over := eval[int](t, ctx, `document.documentElement.scrollWidth - document.documentElement.clientWidth`); over > 0 {
			t.Errorf("the page is %d px wider than a 390 px screen", over)
		}
		screenshot(t, ctx, shots, "09-narrow")
	})
}

// openFile opens a container snapshot's page and its /etc directory. The
// page's downloads take their Blob path: headless Chromium cannot answer
// showSaveFilePicker's dialog (TestDashboard_Restore covers streaming).
func openFile(t *testing.T, ctx context.Context, snap string) {
	t.Helper()
	eval[string](t, ctx, fmt.Sprintf(`window.showSaveFilePicker = undefined; location.hash = "#/snapshot/%s"`, snap))
	ui(t, ctx, "open snapshot "+snap,
		chromedp.WaitVisible(chromedp.ID("file-list")),
		chromedp.Click(chromedp.Search(`//table[@id="file-list"]//button[text()="etc/"]`)),
		chromedp.WaitVisible(chromedp.CSS(`button[data-path="/etc/app.conf"]`)),
	)
}

// waitFile waits for a finished download (Chromium writes name.crdownload
// first and renames it when done).
func waitFile(t *testing.T, p string) []byte {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(p)
		if err == nil {
			return b
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	t.Fatalf("download %s did not appear; the directory holds %v", p, entries)
	return nil
}
