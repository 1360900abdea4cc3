package backup

import (
	"context"
	"errors"
)

// PVE asks whether a disk may be backed up incrementally (query
// incremental), and then, seconds later, pulls it with bitmap mode reuse:
// QEMU's dirty bitmap then covers what changed since the snapshot the answer
// was about. If that snapshot is deleted in between, the last snapshot is an
// older one, and the dirty regions over its index would be a disk that
// never existed. So the base of each positive answer is remembered, and a
// reuse pull on another base fails (PVE then starts a new bitmap next time).
// Answers live in memory: a pull on another replica, or after a restart,
// is checked as before (base found again, its chunks checked).

// AnswerIncremental answers query incremental for one device: whether an
// incremental may build on the last snapshot (IncrementalBase).
func (s *Service) AnswerIncremental(ctx context.Context, session Snapshot, device string, size int64) (bool, error) {
	base, _, err := s.IncrementalBase(ctx, session, device, size)
	key := pullKey{session.ID, device}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.bases, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if s.bases == nil {
		s.bases = map[pullKey]string{}
	}
	s.bases[key] = base.ID
	return true, nil
}

// checkBase fails a reuse pull whose base is not the snapshot query
// incremental offered.
func (s *Service) checkBase(session Snapshot, device string, base Snapshot) error {
	s.mu.Lock()
	want, ok := s.bases[pullKey{session.ID, device}]
	s.mu.Unlock()
	if ok && want != base.ID {
		return Errorf(ErrConflict, "the snapshot query incremental offered as the base of %s was deleted or replaced since (the last one now is %s); the bitmap must be recreated (new)",
			device, base.Name)
	}
	return nil
}

// dropBases forgets the answers given to a session that ends.
func (s *Service) dropBases(session string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.bases {
		if k.session == session {
			delete(s.bases, k)
		}
	}
}
