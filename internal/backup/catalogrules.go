package backup

import "bytes"

// Rules every catalog backend applies the same way: what a new snapshot
// and a file entry must look like, and how file paths are listed.

// CheckNewSnapshot validates a snapshot about to be created and fills in
// its name when empty (the PVE name for its type, guest and time); a name
// given must be that one. Errors are ErrInvalid.
func CheckNewSnapshot(snap *Snapshot) error {
	if err := ValidateNamespace(snap.Namespace); err != nil {
		return err
	}
	if !snap.Type.Valid() {
		return Errorf(ErrInvalid, "guest type %q: want qemu or lxc", snap.Type)
	}
	if snap.VMID < 1 {
		return Errorf(ErrInvalid, "vmid %d: want a positive number", snap.VMID)
	}
	if snap.BackupTime.IsZero() {
		return Errorf(ErrInvalid, "backup time is missing")
	}
	want := SnapshotName(snap.Type, snap.VMID, snap.BackupTime)
	if snap.Name == "" {
		snap.Name = want
	} else if snap.Name != want {
		return Errorf(ErrInvalid, "snapshot name %q does not match type, vmid and backup time (want %q)", snap.Name, want)
	}
	return nil
}

// CheckFileEntry validates a file catalog entry (ErrInvalid).
func CheckFileEntry(f *FileEntry) error {
	switch {
	case !CleanFilePath(f.Path):
		return Errorf(ErrInvalid, "file path %q: want an absolute path without ., .., empty components or NUL", f.Path)
	case !f.Type.Valid():
		return Errorf(ErrInvalid, "file %q: unknown type %q", f.Path, f.Type)
	case f.Size < 0 || f.Offset < 0 || f.MetaOffset < 0 || f.PayloadOffset < 0 || f.VolatileOffset < 0:
		return Errorf(ErrInvalid, "file %q: negative size or offset", f.Path)
	}
	return nil
}

// CleanFilePath reports whether p is "/" or "/a/b" with no empty, "." or
// ".." component and no NUL.
func CleanFilePath(p []byte) bool {
	if len(p) == 0 || p[0] != '/' || bytes.IndexByte(p, 0) >= 0 {
		return false
	}
	if len(p) == 1 {
		return true
	}
	for _, c := range bytes.Split(p[1:], []byte{'/'}) {
		if len(c) == 0 || string(c) == "." || string(c) == ".." {
			return false
		}
	}
	return true
}

// FileParentDir returns the directory a clean path is listed in; "" for
// "/".
func FileParentDir(p []byte) []byte {
	if len(p) <= 1 {
		return []byte{}
	}
	i := bytes.LastIndexByte(p, '/')
	if i == 0 {
		return []byte{'/'}
	}
	return p[:i]
}
