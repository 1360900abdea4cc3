package handlers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/archive"
	"github.com/backstop-pve/backstop/internal/backup"
)

// archiveName is the name of a container backup's one archive.
const archiveName = "root.tar"

// PutBackupArchive takes the container's tar stream as it arrives and
// stores it (internal/archive), filling the file catalog on the way.
func (h *handler) PutBackupArchive(ctx context.Context, req api.PutBackupArchiveRequestObject) (api.PutBackupArchiveResponseObject, error) {
	s, err := h.openSession(ctx, req.Id.String())
	if err != nil {
		return nil, err
	}
	a, err := h.backups.StoreArchive(ctx, s, archiveName, func(ctx context.Context, w backup.ArchiveWriters) (*backup.ArchiveIndex, int64, int64, error) {
		res, err := archive.Ingest(ctx, req.Body, archive.Writers{Meta: w.Meta, Payload: w.Payload, Volatile: w.Volatile},
			archive.DefaultConfig(), func(es []archive.Entry) error {
				return h.catalog.AddFiles(ctx, s.ID, archiveName, catalogEntries(es))
			})
		if err != nil {
			return nil, 0, 0, err
		}
		return &backup.ArchiveIndex{Meta: res.Meta, Payload: res.Payload, Volatile: res.Volatile}, res.Size, res.Files, nil
	})
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, backup.ErrInvalid) && !errors.As(err, &maxBytes) {
			err = backup.Errorf(backup.ErrInvalid, "the upload ended before the end of the tar stream")
		}
		return nil, err
	}
	return api.PutBackupArchive201JSONResponse{Size: a.Size, NewBytes: a.NewBytes, Files: a.Files}, nil
}

func catalogEntries(es []archive.Entry) []backup.FileEntry {
	out := make([]backup.FileEntry, len(es))
	for i, e := range es {
		out[i] = backup.FileEntry{
			Path: e.Path, Type: backup.FileType(e.Type), Size: e.Size, Mode: e.Mode, UID: e.UID, GID: e.GID,
			ModTime: e.ModTime, LinkTarget: e.LinkTarget, Offset: e.Offset,
			MetaOffset: e.MetaOffset, PayloadOffset: e.PayloadOffset, VolatileOffset: e.VolatileOffset,
		}
	}
	return out
}

// GetSnapshotArchive streams the stored tar byte for byte, zstd-compressed
// on request.
func (h *handler) GetSnapshotArchive(ctx context.Context, req api.GetSnapshotArchiveRequestObject) (api.GetSnapshotArchiveResponseObject, error) {
	snap, err := h.snapshot(ctx, req.Params.Ns, req.Name)
	if err != nil {
		return nil, err
	}
	a, idx, err := h.backups.LoadArchive(ctx, snap)
	if err != nil {
		return nil, err
	}
	return archiveResponse{ctx: ctx, h: h, name: snap.Name, size: a.Size, idx: idx,
		zstd: req.Params.Compress != nil && *req.Params.Compress == "zstd"}, nil
}

type archiveResponse struct {
	ctx  context.Context
	h    *handler
	name string
	size int64
	idx  *backup.ArchiveIndex
	zstd bool
}

func (r archiveResponse) VisitGetSnapshotArchiveResponse(w http.ResponseWriter) error {
	hd := w.Header()
	idx := archive.Indexes{Meta: r.idx.Meta, Payload: r.idx.Payload, Volatile: r.idx.Volatile}
	if !r.zstd {
		hd.Set("Content-Type", "application/x-tar")
		hd.Set("Content-Length", strconv.FormatInt(r.size, 10))
		hd.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": r.name + ".tar"}))
		w.WriteHeader(http.StatusOK)
		if _, err := archive.Restore(r.ctx, w, idx, r.h.backups.Chunks()); err != nil {
			r.abort(err)
		}
		return nil
	}
	hd.Set("Content-Type", "application/zstd")
	hd.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": r.name + ".tar.zst"}))
	w.WriteHeader(http.StatusOK)
	enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		r.abort(err)
	}
	if _, err := archive.Restore(r.ctx, enc, idx, r.h.backups.Chunks()); err != nil {
		r.abort(err)
	}
	if err := enc.Close(); err != nil {
		r.abort(err)
	}
	return nil
}

// abort cuts a response whose headers are out: the client sees a short
// body, never made-up bytes.
func (r archiveResponse) abort(err error) {
	if r.ctx.Err() == nil {
		r.h.log.ErrorContext(r.ctx, "archive download failed mid-stream; aborting the response", "snapshot", r.name, "err", err)
	}
	panic(http.ErrAbortHandler)
}

// cleanArchivePath normalises a path inside an archive: absolute, no "."
// or empty components. ".." is refused rather than resolved: it has no
// business in a request for a file inside a backup.
func cleanArchivePath(p string) ([]byte, error) {
	if p == "" {
		p = "/"
	}
	if !strings.HasPrefix(p, "/") {
		return nil, backup.Errorf(backup.ErrInvalid, "path %q: want an absolute path inside the archive", p)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return nil, backup.Errorf(backup.ErrInvalid, "path contains NUL")
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return nil, backup.Errorf(backup.ErrInvalid, "path %q: \"..\" is not allowed", p)
		}
	}
	return []byte(path.Clean(p)), nil
}

func (h *handler) ListSnapshotFiles(ctx context.Context, req api.ListSnapshotFilesRequestObject) (api.ListSnapshotFilesResponseObject, error) {
	var p string
	if req.Params.Path != nil {
		p = *req.Params.Path
	}
	dir, err := cleanArchivePath(p)
	if err != nil {
		return nil, err
	}
	snap, err := h.snapshot(ctx, req.Params.Ns, req.Name)
	if err != nil {
		return nil, err
	}
	if snap.Type != backup.GuestLXC {
		return nil, backup.Errorf(backup.ErrInvalid, "snapshot %s is a VM backup; files are listed for containers", snap.Name)
	}
	files, err := h.catalog.ListFiles(ctx, snap.ID, dir)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 && len(dir) > 1 {
		// An empty listing of something that is not a directory is a 404.
		if f, err := h.catalog.StatFile(ctx, snap.ID, dir); err != nil {
			return nil, err
		} else if f.Type != backup.FileDir {
			return nil, backup.Errorf(backup.ErrInvalid, "%q is a %s, not a directory", dir, f.Type)
		}
	}
	out := make(api.ListSnapshotFiles200JSONResponse, 0, len(files))
	for _, f := range files {
		out = append(out, toAPIFile(f))
	}
	return out, nil
}

func toAPIFile(f backup.FileEntry) api.FileEntry {
	e := api.FileEntry{
		Name: path.Base(string(f.Path)), Path: string(f.Path), RawPath: pctEncode(f.Path), Type: api.FileEntryType(f.Type),
		Size: f.Size, Mode: int(f.Mode), Uid: int(f.UID), Gid: int(f.GID), Mtime: api.UnixTime(f.ModTime.Unix()),
	}
	if f.LinkTarget != nil {
		lt := string(f.LinkTarget)
		e.LinkTarget = &lt
	}
	return e
}

// pctEncode percent-encodes a path's bytes for a query parameter.
func pctEncode(p []byte) string { return url.QueryEscape(string(p)) }

func (h *handler) GetSnapshotFileContent(ctx context.Context, req api.GetSnapshotFileContentRequestObject) (api.GetSnapshotFileContentResponseObject, error) {
	p, err := cleanArchivePath(req.Params.Path)
	if err != nil {
		return nil, err
	}
	snap, err := h.snapshot(ctx, req.Params.Ns, req.Name)
	if err != nil {
		return nil, err
	}
	f, err := h.catalog.StatFile(ctx, snap.ID, p)
	if err != nil {
		return nil, err
	}
	if f.Type == backup.FileHardlink {
		// A hard link's content is stored with the file it links to.
		if f, err = h.catalog.StatFile(ctx, snap.ID, f.LinkTarget); err != nil {
			return nil, err
		}
	}
	if f.Type != backup.FileRegular {
		return nil, backup.Errorf(backup.ErrInvalid, "%q is a %s, not a regular file", p, f.Type)
	}
	_, idx, err := h.backups.LoadArchive(ctx, snap)
	if err != nil {
		return nil, err
	}
	file, err := archive.OpenFile(ctx, archive.Indexes{Meta: idx.Meta, Payload: idx.Payload, Volatile: idx.Volatile},
		h.backups.Chunks(), archive.Entry{Path: f.Path, Type: archive.FileType(f.Type), Size: f.Size, Offset: f.Offset,
			MetaOffset: f.MetaOffset, PayloadOffset: f.PayloadOffset, VolatileOffset: f.VolatileOffset})
	if err != nil {
		return nil, err
	}
	return fileResponse{ctx: ctx, h: h, f: file, name: path.Base(string(p))}, nil
}

type fileResponse struct {
	ctx  context.Context
	h    *handler
	f    *archive.File
	name string
}

func (r fileResponse) VisitGetSnapshotFileContentResponse(w http.ResponseWriter) error {
	defer r.f.Close()
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Content-Length", strconv.FormatInt(r.f.Size(), 10))
	hd.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": sanitizeFilename(r.name)}))
	w.WriteHeader(http.StatusOK)
	n, err := io.Copy(w, r.f)
	if err == nil && n != r.f.Size() {
		err = fmt.Errorf("file content is %d bytes, the catalog says %d", n, r.f.Size())
	}
	if err != nil {
		if r.ctx.Err() == nil {
			r.h.log.ErrorContext(r.ctx, "file download failed mid-stream; aborting the response", "err", err)
		}
		panic(http.ErrAbortHandler)
	}
	return nil
}

// sanitizeFilename keeps a download name printable for the header.
func sanitizeFilename(s string) string {
	b := bytes.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return '_'
		}
		return r
	}, []byte(s))
	return strings.ToValidUTF8(string(b), "_")
}
