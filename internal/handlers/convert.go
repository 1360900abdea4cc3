package handlers

import (
	"time"

	"github.com/google/uuid"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

func nsOrDefault(ns *string) string {
	if ns == nil || *ns == "" {
		return backup.DefaultNamespace
	}
	return *ns
}

func unixTime(t time.Time) api.UnixTime { return api.UnixTime(t.Unix()) }

func fromUnix(t api.UnixTime) time.Time { return time.Unix(int64(t), 0).UTC() }

func parseUUID(s string) uuid.UUID {
	id, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil
	}
	return id
}

func toAPIJob(j backup.Job) api.Job {
	return api.Job{
		Id:         parseUUID(j.ID),
		Node:       j.Node,
		Storage:    j.Storage,
		StartTime:  unixTime(j.StartTime),
		FinishedAt: j.FinishedAt,
	}
}

func toAPISnapshot(s backup.Snapshot) api.Snapshot {
	storage := s.Storage
	newBytes := s.NewBytes
	return api.Snapshot{
		Name:        s.Name,
		Volname:     s.Volname(),
		Ns:          s.Namespace,
		Vmid:        s.VMID,
		Type:        api.GuestType(s.Type),
		BackupTime:  unixTime(s.BackupTime),
		Size:        s.Size,
		NewBytes:    &newBytes,
		Notes:       s.Notes,
		Protected:   s.Protected,
		VerifyState: api.SnapshotVerifyState(s.VerifyState),
		VerifiedAt:  s.VerifiedAt,
		Storage:     &storage,
	}
}

func toAPITask(t backup.Task) api.Task {
	out := api.Task{
		Id:         parseUUID(t.ID),
		Kind:       t.Kind,
		State:      api.TaskState(t.State),
		Done:       t.Done,
		Total:      t.Total,
		CreatedAt:  t.CreatedAt,
		UpdatedAt:  t.UpdatedAt,
		FinishedAt: t.FinishedAt,
	}
	if t.Error != "" {
		e := t.Error
		out.Error = &e
	}
	if t.Namespace != "" {
		ns := t.Namespace
		out.Ns = &ns
	}
	if t.SnapshotName != "" {
		name, vmid := t.SnapshotName, t.VMID
		out.Snapshot, out.Vmid = &name, &vmid
	}
	return out
}

func toAPIToken(t backup.Token) api.Token {
	ns := t.Namespaces
	if ns == nil {
		ns = []string{}
	}
	return api.Token{
		Id:         t.ID,
		Name:       t.Name,
		Role:       api.TokenRole(t.Role),
		Namespaces: ns,
		CreatedAt:  t.CreatedAt,
		ExpiresAt:  t.ExpiresAt,
	}
}
