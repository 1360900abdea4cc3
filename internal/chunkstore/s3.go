package chunkstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/backstop-pve/backstop/internal/backup"
)

// s3Store keeps objects in one bucket through minio-go. minio-go's own
// retries are off (MaxRetries 1) so that the policy lives in one place, do.
type s3Store struct {
	client *minio.Client
	core   minio.Core // same client; Core.GetObject answers in one request
	tr     *http.Transport
	bucket string
	region string
	log    *slog.Logger

	maxRetries          int
	retryBase, retryMax time.Duration
	timeout             time.Duration // per attempt
}

var _ blobStore = (*s3Store)(nil)

// deleteBatch is the S3 limit of keys per DeleteObjects request.
const deleteBatch = 1000

func openS3Store(ctx context.Context, loc Location, cfg Config, log *slog.Logger) (*s3Store, error) {
	tr := newTransport(!loc.Insecure)
	client, err := minio.New(loc.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, string(cfg.SecretKey), ""),
		Secure:       !loc.Insecure,
		Region:       loc.Region, // set, so minio-go never asks for the bucket location
		BucketLookup: minio.BucketLookupPath,
		Transport:    tr,
		MaxRetries:   1,
	})
	if err != nil {
		return nil, fmt.Errorf("chunkstore: s3 client for %s: %w", loc.Endpoint, err)
	}
	s := &s3Store{
		client: client, core: minio.Core{Client: client}, tr: tr,
		bucket: loc.Bucket, region: loc.Region, log: log,
		maxRetries: cfg.MaxRetries, retryBase: cfg.RetryBase, retryMax: cfg.RetryMax, timeout: cfg.Timeout,
	}
	if err := s.ensureBucket(ctx); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	return s, nil
}

func newTransport(secure bool) *http.Transport {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64, // many chunk transfers run in parallel against one endpoint
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // objects are bytes; never let Go gunzip them
	}
	if secure {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return tr
}

// ensureBucket creates the bucket unless it exists. Two replicas starting at
// once may both try; BucketAlreadyOwnedByYou is success.
func (s *s3Store) ensureBucket(ctx context.Context) error {
	return s.do(ctx, "create bucket", s.bucket, func(ctx context.Context) error {
		ok, err := s.client.BucketExists(ctx, s.bucket)
		if err != nil || ok {
			return err
		}
		err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: s.region})
		if minio.ToErrorResponse(err).Code == minio.BucketAlreadyOwnedByYou {
			return nil
		}
		if err == nil {
			s.log.InfoContext(ctx, "chunkstore: created bucket", "bucket", s.bucket)
		}
		return err
	})
}

// Put sends one PUT (never multipart: envelopes are small), so the object
// appears whole or not at all; identical content makes repeats harmless.
func (s *s3Store) Put(ctx context.Context, key string, data []byte) error {
	return s.do(ctx, "put", key, func(ctx context.Context) error {
		_, err := s.client.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)),
			minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
		return err
	})
}

func (s *s3Store) Get(ctx context.Context, key string, buf []byte, limit int64) ([]byte, error) {
	var out []byte
	err := s.do(ctx, "get", key, func(ctx context.Context) error {
		rc, info, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer rc.Close()
		out, err = readObject(rc, info.Size, limit, buf)
		return err
	})
	return out, err
}

// Delete sends DeleteObjects requests of up to 1000 keys; S3 reports a
// missing key as deleted. A failed batch is retried whole (idempotent).
func (s *s3Store) Delete(ctx context.Context, keys []string) error {
	for batch := range slices.Chunk(keys, deleteBatch) {
		err := s.do(ctx, "delete", batch[0], func(ctx context.Context) error {
			return s.deleteBatch(ctx, batch)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *s3Store) deleteBatch(ctx context.Context, keys []string) error {
	objects := func(yield func(minio.ObjectInfo) bool) {
		for _, k := range keys {
			if !yield(minio.ObjectInfo{Key: k}) {
				return
			}
		}
	}
	results, err := s.client.RemoveObjectsWithIter(ctx, s.bucket, objects, minio.RemoveObjectsOptions{})
	if err != nil {
		return err
	}
	for r := range results {
		if r.Err != nil && minio.ToErrorResponse(r.Err).Code != minio.NoSuchKey {
			// minio-go stops after a failed request; the first error says it all.
			return fmt.Errorf("%s: %w", r.ObjectName, r.Err)
		}
	}
	return nil
}

func (s *s3Store) List(ctx context.Context, prefix string, fn func(key string) error) error {
	ctx, cancel := context.WithCancel(ctx) // stops minio-go's lister if fn fails
	defer cancel()
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return s3Err("list", prefix, obj.Err, isTransient(obj.Err))
		}
		if err := fn(obj.Key); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chunkstore: list %s: %w", prefix, err)
	}
	return nil
}

func (s *s3Store) Ping(ctx context.Context) error {
	return s.do(ctx, "ping", s.bucket, func(ctx context.Context) error {
		ok, err := s.client.BucketExists(ctx, s.bucket)
		if err == nil && !ok {
			return fmt.Errorf("bucket %s does not exist: %w", s.bucket, backup.ErrUnavailable)
		}
		return err
	})
}

func (s *s3Store) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}

// do runs fn, retrying transient failures with exponential backoff and
// equal jitter (half the step fixed, half random) at most maxRetries times.
// Each attempt gets its own timeout. The result is translated by s3Err.
func (s *s3Store) do(ctx context.Context, op, key string, fn func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("chunkstore: %s %s: %w", op, key, err)
		}
		actx, cancel := context.WithTimeout(ctx, s.timeout)
		err := fn(actx)
		attemptTimedOut := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("chunkstore: %s %s: %w: %w", op, key, ctx.Err(), err)
		}
		if attemptTimedOut {
			// Not the caller's deadline: do not let it look like one.
			err = fmt.Errorf("attempt timed out after %v (%v)", s.timeout, err)
		}
		transient := attemptTimedOut || isTransient(err)
		if !transient || attempt >= s.maxRetries {
			return s3Err(op, key, err, transient)
		}
		wait := s.backoff(attempt)
		s.log.WarnContext(ctx, "chunkstore: s3 request failed, retrying",
			"op", op, "key", key, "attempt", attempt+1, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("chunkstore: %s %s: %w: %w", op, key, ctx.Err(), err)
		case <-t.C:
		}
	}
}

func (s *s3Store) backoff(attempt int) time.Duration {
	d := s.retryMax
	if attempt < 30 && s.retryBase<<attempt < s.retryMax {
		d = s.retryBase << attempt
	}
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// isTransient reports whether a failed request may succeed when repeated:
// network failures, 5xx answers (except storage full), 429/408 and the
// S3 codes for throttling and timeouts.
func isTransient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, errTooLarge) {
		return false
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		if isStorageFull(er) {
			return false
		}
		switch er.Code {
		case "SlowDown", "SlowDownRead", "SlowDownWrite", "RequestTimeout", "XMinioServerNotInitialized":
			return true
		}
		return er.StatusCode >= 500 || er.StatusCode == http.StatusTooManyRequests ||
			er.StatusCode == http.StatusRequestTimeout
	}
	var ne net.Error
	var ue *url.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ne) || errors.As(err, &ue)
}

func isStorageFull(er minio.ErrorResponse) bool {
	switch er.Code {
	case "XMinioStorageFull", "StorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded":
		return true
	}
	return er.StatusCode == http.StatusInsufficientStorage
}

// s3Err translates an S3 failure into an error kind at the edge, keeping the
// cause. transient says the failure was worth retrying (and retries ran out).
// S3 error responses are shown with their code and status, which their
// Error() leaves out.
func s3Err(op, key string, err error, transient bool) error {
	var er minio.ErrorResponse
	isResp := errors.As(err, &er)
	what := fmt.Sprintf("chunkstore: %s %s", op, key)
	if isResp && er.Code != "" {
		what += fmt.Sprintf(" (s3 %s, http %d)", er.Code, er.StatusCode)
	}
	switch {
	case errors.Is(err, backup.ErrUnavailable):
		return fmt.Errorf("%s: %w", what, err)
	case isResp && (er.Code == minio.NoSuchKey || er.StatusCode == http.StatusNotFound && er.Code != minio.NoSuchBucket):
		return fmt.Errorf("%s: %w: %w", what, backup.ErrNotFound, err)
	case isResp && isStorageFull(er):
		return fmt.Errorf("%s: %w: %w", what, backup.ErrStorageFull, err)
	case transient, isResp && er.Code == minio.NoSuchBucket:
		return fmt.Errorf("%s: %w: %w", what, backup.ErrUnavailable, err)
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
}
