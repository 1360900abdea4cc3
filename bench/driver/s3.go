package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/errgroup"
)

// s3Peer is the S3 server scripts/peers.sh started (versitygw).
type s3Peer struct {
	endpoint, access, secret string
}

// Concurrency of the ceilings: what Backstop uses. A pull has 4 uploads in
// flight (backup.DefaultPullConfig: Uploaders 4); a restore reads ahead 8
// chunks with 8 fetches at once (DefaultServiceConfig: ReadAhead 8,
// Prefetchers 8).
const (
	putConcurrency = 4
	getConcurrency = 8
)

func (p s3Peer) client() (*minio.Client, error) {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return minio.New(p.endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(p.access, p.secret, ""),
		Secure:       false,
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
		Transport:    tr,
	})
}

// s3Ceiling PUTs every non-zero 4 MiB block of the image as its own object
// (4 in flight), then GETs them all back (8 in flight), into a bucket of
// its own, with the same minio-go options Backstop's chunk store uses
// (single PUT, no multipart). It returns both wall times.
func (b *bench) s3Ceiling(ctx context.Context, im *image) (put, get time.Duration, objects int, err error) {
	cl, err := b.s3.client()
	if err != nil {
		return 0, 0, 0, err
	}
	bucket := "bench-ceiling-" + randomHex(4)
	if err := cl.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		return 0, 0, 0, fmt.Errorf("make bucket %s: %w", bucket, err)
	}
	defer b.removeBucket(bucket)
	f, err := os.Open(im.raw)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	blocks := im.nonZero()
	key := func(i int) string { return fmt.Sprintf("blocks/%08d", i) }

	// Read the blocks once so that both passes find them in the page cache.
	warm := make([]byte, blockSize)
	for _, i := range blocks {
		if _, err := f.ReadAt(warm, int64(i)*blockSize); err != nil {
			return 0, 0, 0, err
		}
	}

	start := time.Now()
	err = fanOut(ctx, blocks, putConcurrency, func(ctx context.Context, buf []byte, i int) error {
		if _, err := f.ReadAt(buf, int64(i)*blockSize); err != nil {
			return err
		}
		_, err := cl.PutObject(ctx, bucket, key(i), bytes.NewReader(buf), int64(len(buf)),
			minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
		return err
	})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("S3 PUT: %w", err)
	}
	put = time.Since(start)

	core := minio.Core{Client: cl}
	start = time.Now()
	err = fanOut(ctx, blocks, getConcurrency, func(ctx context.Context, buf []byte, i int) error {
		rc, _, _, err := core.GetObject(ctx, bucket, key(i), minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer rc.Close()
		if _, err := io.ReadFull(rc, buf); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("S3 GET: %w", err)
	}
	get = time.Since(start)
	return put, get, len(blocks), nil
}

// fanOut runs fn over items with n workers, each with its own 4 MiB buffer.
func fanOut(ctx context.Context, items []int, n int, fn func(ctx context.Context, buf []byte, item int) error) error {
	g, ctx := errgroup.WithContext(ctx)
	ch := make(chan int)
	for range n {
		g.Go(func() error {
			buf := make([]byte, blockSize)
			for i := range ch {
				if err := fn(ctx, buf, i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(ch)
		for _, i := range items {
			select {
			case ch <- i:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	return g.Wait()
}

// removeBucket deletes a bucket and everything in it, best effort.
func (b *bench) removeBucket(bucket string) {
	cl, err := b.s3.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if ok, err := cl.BucketExists(ctx, bucket); err != nil || !ok {
		return
	}
	objs := cl.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true})
	for r := range cl.RemoveObjects(ctx, bucket, objs, minio.RemoveObjectsOptions{}) {
		if r.Err != nil {
			b.logf("remove %s/%s: %v", bucket, r.ObjectName, r.Err)
		}
	}
	if err := cl.RemoveBucket(ctx, bucket); err != nil {
		b.logf("remove bucket %s: %v", bucket, err)
	}
}
