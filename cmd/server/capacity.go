package main

import (
	"context"
	"net/url"

	"golang.org/x/sys/unix"
)

// storeCapacity returns how to measure the store's capacity for GET
// /status: the file system's for a file:// store. An S3 bucket has no
// capacity to report, so there it is nil and the status reports only what
// is used.
func storeCapacity(store string) func(context.Context) (int64, int64, error) {
	u, err := url.Parse(store)
	if err != nil || u.Scheme != "file" {
		return nil
	}
	dir := u.Path
	return func(context.Context) (int64, int64, error) {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return 0, 0, err
		}
		bs := int64(st.Bsize)
		return int64(st.Blocks) * bs, int64(st.Bavail) * bs, nil
	}
}
