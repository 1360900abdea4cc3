package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// restic drives the restic binary against its own bucket of the same S3
// server, with the same GOMAXPROCS as the Backstop server.
type restic struct {
	bin     string
	env     []string
	version string
}

type resticRun struct {
	dur       time.Duration
	cpu       time.Duration
	dataAdded int64
}

func (b *bench) newRestic(ctx context.Context) (*restic, error) {
	bucket := "bench-restic-" + randomHex(4)
	cache := filepath.Join(b.work, "restic-cache")
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return nil, err
	}
	r := &restic{bin: b.resticBin, env: []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + b.work, "TMPDIR=" + b.work,
		"GOMAXPROCS=" + strconv.Itoa(runtime.NumCPU()),
		"RESTIC_REPOSITORY=s3:http://" + b.s3.endpoint + "/" + bucket,
		"RESTIC_PASSWORD=bench-" + randomHex(8),
		"RESTIC_CACHE_DIR=" + cache,
		"AWS_ACCESS_KEY_ID=" + b.s3.access,
		"AWS_SECRET_ACCESS_KEY=" + b.s3.secret,
		"AWS_DEFAULT_REGION=us-east-1",
	}}
	b.onCleanup(func() { b.removeBucket(bucket) })
	out, err := runEnv(ctx, r.env, r.bin, "version")
	if err != nil {
		return nil, err
	}
	r.version = strings.TrimSpace(out)
	if _, err := runEnv(ctx, r.env, r.bin, "init"); err != nil {
		return nil, err
	}
	return r, nil
}

// timed runs restic with args and returns its wall and CPU time.
func (r *restic) timed(ctx context.Context, args ...string) (resticRun, string, error) {
	cmd := exec.CommandContext(ctx, r.bin, args...)
	cmd.Env = r.env
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	res := resticRun{dur: time.Since(start)}
	if cmd.ProcessState != nil {
		res.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return res, string(out), fmt.Errorf("restic %s: %w: %s", strings.Join(args, " "), err, tail(string(out), 600))
	}
	return res, string(out), nil
}

// backup backs up one file and reads data_added from the JSON summary.
func (r *restic) backup(ctx context.Context, file string) (resticRun, error) {
	res, out, err := r.timed(ctx, "backup", "--json", "--host", "bench", file)
	if err != nil {
		return res, err
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m struct {
			MessageType string `json:"message_type"`
			DataAdded   int64  `json:"data_added"`
		}
		if json.Unmarshal(sc.Bytes(), &m) == nil && m.MessageType == "summary" {
			res.dataAdded = m.DataAdded
		}
	}
	return res, nil
}

// restore restores the latest snapshot under dir and returns the path the
// backed-up file has there.
func (r *restic) restore(ctx context.Context, file, dir string) (resticRun, string, error) {
	res, _, err := r.timed(ctx, "restore", "latest", "--target", dir)
	abs, _ := filepath.Abs(file)
	return res, filepath.Join(dir, abs), err
}
