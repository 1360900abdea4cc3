package main

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/backstop-pve/backstop/internal/testenv"
)

// repoRoot is the module root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// composeCommand returns the compose CLI: the docker plugin when it works,
// else Debian's docker-compose.
func composeCommand(t *testing.T) []string {
	t.Helper()
	if d, err := exec.LookPath("docker"); err == nil && exec.Command(d, "compose", "version").Run() == nil {
		return []string{d, "compose"}
	}
	if dc, err := exec.LookPath("docker-compose"); err == nil {
		return []string{dc}
	}
	testenv.Missing(t, testenv.PeerCompose, "neither `docker compose` nor docker-compose is installed")
	return nil
}

// TestCompose_Config validates docker-compose.yml with the compose CLI
// (no engine needed): with .env.example as .env it is valid and wires
// Backstop to both backends; without the secrets it is refused.
func TestCompose_Config(t *testing.T) {
	compose := composeCommand(t)
	root := repoRoot(t)
	dir := t.TempDir()
	for _, f := range []struct{ from, to string }{{"docker-compose.yml", "docker-compose.yml"}, {".env.example", ".env"}} {
		b, err := os.ReadFile(filepath.Join(root, f.from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.to), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func() (string, error) {
		cmd := exec.Command(compose[0], append(compose[1:], "config")...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "COMPOSE_PROJECT_NAME=backstop") // no stray POSTGRES_PASSWORD etc. expected
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err != nil {
		t.Fatalf("compose config: %v\n%s", err, out)
	}
	for _, want := range []string{
		"BACKSTOP_DATABASE_URL: postgres://backstop:change-me-postgres@postgres:5432/backstop",
		"BACKSTOP_STORE: s3://backstop?endpoint=s3:7070&insecure=1",
		"dockerfile: deploy/Dockerfile",
		"healthcheck",
		"/readyz",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("compose config lacks %q:\n%s", want, out)
		}
	}
	// Without .env the required secrets are missing: compose must refuse.
	if err := os.Remove(filepath.Join(dir, ".env")); err != nil {
		t.Fatal(err)
	}
	if out, err := run(); err == nil || !strings.Contains(out, "POSTGRES_PASSWORD") {
		t.Errorf("compose config without .env: err %v, output %s; want a refusal naming POSTGRES_PASSWORD", err, out)
	}
}

// dockerfileBuild returns the env and argv of the go build in
// deploy/Dockerfile (backslash continuations joined), with the output path
// replaced by out and build args given their defaults.
func dockerfileBuild(t *testing.T, dockerfile, out string) (env, argv []string, finalStage []string) {
	t.Helper()
	f, err := os.Open(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	var cur string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasSuffix(l, `\`) {
			cur += strings.TrimSuffix(l, `\`) + " "
			continue
		}
		lines = append(lines, cur+l)
		cur = ""
	}
	args := map[string]string{}
	var run string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "FROM "):
			finalStage = []string{l}
		case strings.HasPrefix(l, "ARG "):
			k, v, _ := strings.Cut(strings.TrimPrefix(l, "ARG "), "=")
			args[k] = v
			finalStage = append(finalStage, l)
		case strings.HasPrefix(l, "RUN ") && strings.Contains(l, "go build"):
			run = strings.TrimPrefix(l, "RUN ")
		default:
			finalStage = append(finalStage, l)
		}
	}
	if run == "" {
		t.Fatalf("%s has no RUN … go build line", dockerfile)
	}
	run = os.Expand(run, func(k string) string { return args[k] })
	// Split on spaces, keeping double-quoted words whole.
	words := regexp.MustCompile(`[^\s"]*"[^"]*"[^\s"]*|[^\s"]+`).FindAllString(run, -1)
	i := 0
	for ; i < len(words) && strings.Contains(words[i], "=") && !strings.HasPrefix(words[i], "-"); i++ {
		env = append(env, words[i])
	}
	for _, w := range words[i:] {
		argv = append(argv, strings.ReplaceAll(w, `"`, ""))
	}
	for j := range argv {
		if argv[j] == "-o" && j+1 < len(argv) {
			argv[j+1] = out
		}
	}
	return env, argv, finalStage
}

// TestDockerfile_StaticBinary runs the Dockerfile's go build line as it
// stands and checks the binary is static (no ELF interpreter, no shared
// libraries), and that the final stage is a minimal base run as non-root.
func TestDockerfile_StaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the server (-short)")
	}
	root := repoRoot(t)
	out := filepath.Join(t.TempDir(), "backstop")
	env, argv, final := dockerfileBuild(t, filepath.Join(root, "deploy", "Dockerfile"), out)
	if !contains(env, "CGO_ENABLED=0") {
		t.Fatalf("the Dockerfile builds with %v: want CGO_ENABLED=0", env)
	}
	if len(argv) < 2 || argv[0] != "go" || argv[1] != "build" {
		t.Fatalf("build line %v", argv)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %v: %v\n%s", env, argv, err, b)
	}
	ef, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("binary has a %v program header: not static", p.Type)
		}
	}
	if libs, err := ef.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("binary imports shared libraries %v (%v)", libs, err)
	}
	// The final stage: distroless static or scratch, a non-root user.
	if !strings.Contains(final[0], "distroless/static") && !strings.Contains(final[0], "scratch") {
		t.Errorf("final stage %q: want distroless static or scratch", final[0])
	}
	var user string
	for _, l := range final {
		if strings.HasPrefix(l, "USER ") {
			user = strings.TrimSpace(strings.TrimPrefix(l, "USER "))
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0:") || user == "0" {
		t.Errorf("final stage runs as %q: want a non-root user", user)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
