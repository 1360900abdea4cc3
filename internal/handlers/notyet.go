package handlers

import "github.com/backstop-pve/backstop/internal/backup"

// notYet answers 501 for a part of the contract this server cannot serve
// as configured (e.g. NBD exports without an NBD server).
func notYet(what string) error {
	return backup.Errorf(backup.ErrNotImplemented, "%s is not implemented yet", what)
}
