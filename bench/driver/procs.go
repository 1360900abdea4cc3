package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// run runs a tool to completion and returns its combined output; the
// error carries the tail of that output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	return runEnv(ctx, nil, name, args...)
}

func runEnv(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = env
	}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(string(out), 600))
	}
	return string(out), nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// alive reports whether pid is a process that has not exited (a zombie
// counts as exited: whoever reaps it is not us).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// stopPID sends SIGTERM to pid, waits up to grace for it to exit, then
// sends SIGKILL.
func stopPID(pid int, grace time.Duration) {
	if pid <= 0 || !alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 100 {
		if !alive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procStatusKB reads a "Vm…:  N kB" line of /proc/PID/status.
func procStatusKB(pid int, field string) (int64, error) {
	return procStatusFile(fmt.Sprintf("/proc/%d/status", pid), field)
}

// cpuTime is the user+system CPU time pid has used so far (USER_HZ is 100
// on Linux).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := firstErr(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(u+s) * 10 * time.Millisecond, nil
}

// qemuNBD is a qemu-nbd serving an image read-only as drive-scsi0 with the
// dirty bitmap bm0, on a UNIX socket or on 127.0.0.1:port.
type qemuNBD struct {
	pid  int
	uri  string
	sock string
}

func (b *bench) startQemuNBD(ctx context.Context, img string, tcp bool) (*qemuNBD, error) {
	dir, err := os.MkdirTemp(b.work, "qemu-nbd-")
	if err != nil {
		return nil, err
	}
	pidFile := filepath.Join(dir, "nbd.pid")
	args := []string{"--fork", "--pid-file=" + pidFile, "--persistent", "--shared=8", "--read-only",
		"-f", "qcow2", "-B", "bm0", "-x", "drive-scsi0"}
	q := &qemuNBD{}
	if tcp {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		args = append(args, "-b", "127.0.0.1", "-p", strconv.Itoa(port))
		q.uri = fmt.Sprintf("nbd://127.0.0.1:%d/drive-scsi0", port)
	} else {
		q.sock = filepath.Join(dir, "nbd.sock")
		args = append(args, "-k", q.sock)
		q.uri = "nbd+unix:///drive-scsi0?socket=" + q.sock
	}
	if _, err := run(ctx, "qemu-nbd", append(args, img)...); err != nil {
		return nil, err
	}
	pb, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("qemu-nbd pid file: %w", err)
	}
	if q.pid, err = strconv.Atoi(strings.TrimSpace(string(pb))); err != nil {
		return nil, fmt.Errorf("qemu-nbd pid file: %q", pb)
	}
	b.onCleanup(q.stop)
	return q, nil
}

// stop ends qemu-nbd by its PID and waits until it has released the image.
func (q *qemuNBD) stop() {
	if q == nil || q.pid == 0 {
		return
	}
	stopPID(q.pid, 5*time.Second)
	q.pid = 0
}

// child is a process the driver started and waits for.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startChild(cmd *exec.Cmd) (*child, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the child's PID and waits up to grace, then kills it.
func (c *child) stop(grace time.Duration) {
	if c == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return
	case <-time.After(grace):
	}
	_ = c.cmd.Process.Kill()
	<-c.done
}

// nbdfuse mounts an NBD URI as MNT/disk.raw, read-only, and returns the
// file's path and a function that unmounts it and stops nbdfuse by PID.
func (b *bench) nbdfuse(ctx context.Context, uri string, size int64) (string, func(), error) {
	mnt, err := os.MkdirTemp(b.work, "fuse-")
	if err != nil {
		return "", nil, err
	}
	pidFile := filepath.Join(b.work, filepath.Base(mnt)+".pid")
	logf, err := os.Create(mnt + ".log")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command("nbdfuse", "--readonly", "-P", pidFile, filepath.Join(mnt, "disk.raw"), uri)
	cmd.Stdout, cmd.Stderr = logf, logf
	c, err := startChild(cmd)
	if err != nil {
		logf.Close()
		return "", nil, err
	}
	stop := func() {
		if !c.exited() {
			_, _ = run(context.Background(), "fusermount3", "-u", mnt)
			select {
			case <-c.done:
			case <-time.After(5 * time.Second):
			}
			c.stop(2 * time.Second)
		}
		logf.Close()
		_ = os.Remove(mnt)
		_ = os.Remove(pidFile)
		_ = os.Remove(mnt + ".log")
	}
	b.onCleanup(stop)
	file := filepath.Join(mnt, "disk.raw")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(pidFile); err == nil {
			if st, err := os.Stat(file); err == nil && st.Size() == size {
				return file, stop, nil
			}
		}
		if c.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			lb, _ := os.ReadFile(mnt + ".log")
			stop()
			return "", nil, fmt.Errorf("nbdfuse did not mount %s: %v %s", uri, c.err, tail(string(lb), 400))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
