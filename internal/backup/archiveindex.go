package backup

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// ArchiveIndex locates the three streams a container archive is stored as
// (internal/archive): meta records, member payload and volatile header
// fields, each a dynamic index.
//
//	"BSAIDX" u16 version=1 | 3 × (u32 length | dynamic index) | 32-byte SHA-256 of all before
type ArchiveIndex struct {
	Meta, Payload, Volatile *DynamicIndex
}

var archiveMagic = []byte("BSAIDX")

// Refs returns the distinct chunk ids of the three streams.
func (a *ArchiveIndex) Refs() []ChunkID {
	var all []ChunkID
	for _, d := range []*DynamicIndex{a.Meta, a.Payload, a.Volatile} {
		all = append(all, d.Refs()...)
	}
	return distinct(all)
}

// MarshalBinary encodes the index.
func (a *ArchiveIndex) MarshalBinary() ([]byte, error) {
	b := append([]byte(nil), archiveMagic...)
	b = binary.BigEndian.AppendUint16(b, version)
	for _, d := range []*DynamicIndex{a.Meta, a.Payload, a.Volatile} {
		if d == nil {
			return nil, fmt.Errorf("backup: archive index: missing stream")
		}
		db, err := d.MarshalBinary()
		if err != nil {
			return nil, err
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(db)))
		b = append(b, db...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...), nil
}

// UnmarshalArchiveIndex decodes and validates an archive index.
func UnmarshalArchiveIndex(b []byte) (*ArchiveIndex, error) {
	body, err := verify(b, archiveMagic)
	if err != nil {
		return nil, err
	}
	var out [3]*DynamicIndex
	for i := range out {
		if len(body) < 4 {
			return nil, malformed("archive: short")
		}
		n := binary.BigEndian.Uint32(body)
		body = body[4:]
		if uint64(n) > uint64(len(body)) {
			return nil, malformed("archive: stream index beyond the end")
		}
		if out[i], err = UnmarshalDynamicIndex(body[:n]); err != nil {
			return nil, err
		}
		body = body[n:]
	}
	if len(body) != 0 {
		return nil, malformed("archive: trailing bytes")
	}
	return &ArchiveIndex{Meta: out[0], Payload: out[1], Volatile: out[2]}, nil
}

// ArchiveWriters are the chunk writers of an archive's three streams.
type ArchiveWriters struct {
	Meta, Payload, Volatile *ChunkWriter
}

// ArchiveIngest reads an archive's stream into the writers and returns its
// index, the stream's length and the number of catalog entries.
type ArchiveIngest func(ctx context.Context, w ArchiveWriters) (idx *ArchiveIndex, size, files int64, err error)

// StoreArchive stores one container archive of an open lxc session: ingest
// cuts and writes the streams, then every chunk is made durable, the index
// stored, and the archive attached to the session. It returns the archive
// with its size and the bytes it added to the store.
func (s *Service) StoreArchive(ctx context.Context, session Snapshot, name string, ingest ArchiveIngest) (a Archive, err error) {
	ctx, span := s.tracer.Start(ctx, "backup.store_archive", trace.WithAttributes(
		attribute.String("namespace", session.Namespace), attribute.Int("vmid", session.VMID)))
	defer func() {
		span.SetAttributes(attribute.Int64("size", a.Size), attribute.Int64("new_bytes", a.NewBytes))
		endSpan(span, err)
	}()
	return s.storeArchive(ctx, session, name, ingest)
}

func (s *Service) storeArchive(ctx context.Context, session Snapshot, name string, ingest ArchiveIngest) (Archive, error) {
	if session.State != SnapshotOpen {
		return Archive{}, Errorf(ErrConflict, "backup %s is already committed", session.ID)
	}
	if session.Type != GuestLXC {
		return Archive{}, Errorf(ErrInvalid, "archives are for lxc backups; %s is %s", session.Name, session.Type)
	}
	archives, err := s.catalog.ListArchives(ctx, session.ID)
	if err != nil {
		return Archive{}, err
	}
	for _, a := range archives {
		if a.Name == name {
			return Archive{}, Errorf(ErrConflict, "backup %s already has its archive", session.ID)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := ArchiveWriters{
		Meta:     NewChunkWriter(wctx, s.chunks, s.catalog, s.cfg.Pull),
		Payload:  NewChunkWriter(wctx, s.chunks, s.catalog, s.cfg.Pull),
		Volatile: NewChunkWriter(wctx, s.chunks, s.catalog, s.cfg.Pull),
	}
	for _, cw := range []*ChunkWriter{w.Meta, w.Payload, w.Volatile} {
		cw.metrics = s.metrics
	}
	idx, size, files, err := ingest(wctx, w)
	var newBytes int64
	for _, cw := range []*ChunkWriter{w.Meta, w.Payload, w.Volatile} {
		if err != nil {
			cancel() // stop the uploads; Close then only waits
		}
		st, cerr := cw.Close()
		if err == nil {
			err = cerr
		}
		newBytes += st.NewBytes
	}
	if err != nil {
		return Archive{}, err
	}
	b, err := idx.MarshalBinary()
	if err != nil {
		return Archive{}, err
	}
	a := Archive{SnapshotID: session.ID, Name: name, Size: size, Files: files, NewBytes: newBytes,
		IndexKey: indexKey(session.ID, name, "aidx"), IndexSum: sha256.Sum256(b)}
	if err := s.objects.PutObject(ctx, a.IndexKey, b); err != nil {
		return Archive{}, fmt.Errorf("store archive index: %w", err)
	}
	if err := s.catalog.AddArchive(ctx, a); err != nil {
		return Archive{}, err
	}
	return a, nil
}

// LoadArchive returns the (first) archive of a snapshot and its index.
func (s *Service) LoadArchive(ctx context.Context, snap Snapshot) (Archive, *ArchiveIndex, error) {
	archives, err := s.catalog.ListArchives(ctx, snap.ID)
	if err != nil {
		return Archive{}, nil, err
	}
	if len(archives) == 0 {
		return Archive{}, nil, Errorf(ErrNotFound, "snapshot %s has no container archive", snap.Name)
	}
	a := archives[0]
	idx, err := s.loadArchiveIndex(ctx, a)
	return a, idx, err
}

func (s *Service) loadArchiveIndex(ctx context.Context, a Archive) (*ArchiveIndex, error) {
	b, err := s.objects.GetObject(ctx, a.IndexKey)
	if err != nil {
		return nil, fmt.Errorf("backup: load index of archive %s: %w", a.Name, err)
	}
	if sha256.Sum256(b) != a.IndexSum {
		return nil, fmt.Errorf("backup: index of archive %s does not match its catalog checksum: %w", a.Name, ErrChecksum)
	}
	return UnmarshalArchiveIndex(b)
}

// Chunks is the store restores read archive chunks from.
func (s *Service) Chunks() ChunkStore { return s.chunks }
