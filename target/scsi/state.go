package scsi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrBadState reports a state file that cannot be decoded.
var ErrBadState = errors.New("scsi: unreadable logical unit state file")

// stateFormat is the version of the state file.
const stateFormat = 1

// luState is the JSON document in LUConfig.StatePath: the saved caching
// page and, when APTPL was set, the persistent reservations.
type luState struct {
	Format int      `json:"format"`
	WCE    *bool    `json:"wce,omitempty"`
	PR     *prState `json:"persistent_reservations,omitempty"`
}

func (lu *LU) loadState() error {
	if lu.statePath == "" {
		return nil
	}
	b, err := os.ReadFile(lu.statePath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("scsi: LUN %d: %w", lu.lun, err)
	}
	var st luState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("scsi: LUN %d: %s: %v: %w", lu.lun, lu.statePath, err, ErrBadState)
	}
	if st.Format != stateFormat {
		return fmt.Errorf("scsi: LUN %d: %s: format %d, want %d: %w", lu.lun, lu.statePath, st.Format, stateFormat, ErrBadState)
	}
	if st.WCE != nil {
		lu.wce.Store(*st.WCE)
		lu.savedWCE.Store(*st.WCE)
		lu.wceSaved.Store(true)
	}
	if st.PR != nil && st.PR.APTPL {
		for _, r := range st.PR.Regs {
			if r.InitiatorPort == "" {
				return fmt.Errorf("scsi: LUN %d: %s: registration without initiator: %w", lu.lun, lu.statePath, ErrBadState)
			}
		}
		if st.PR.Reserved && !validPRType(st.PR.Type) {
			return fmt.Errorf("scsi: LUN %d: %s: reservation type %d: %w", lu.lun, lu.statePath, st.PR.Type, ErrBadState)
		}
		lu.pr = *st.PR
		lu.updateReservationActiveLocked()
	}
	return nil
}

// saveWCE records WCE as the saved caching page.
func (lu *LU) saveWCE(wce bool) error {
	lu.savedWCE.Store(wce)
	lu.wceSaved.Store(true)
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	return lu.writeStateLocked()
}

// savePRLocked writes the persistent reservation state (if APTPL) and the
// saved WCE. resMu is held.
func (lu *LU) savePRLocked() error { return lu.writeStateLocked() }

// writeStateLocked writes the state file atomically: temporary file,
// fsync, rename, fsync of the directory. resMu is held.
func (lu *LU) writeStateLocked() error {
	if lu.statePath == "" {
		return nil
	}
	lu.stateMu.Lock()
	defer lu.stateMu.Unlock()
	st := luState{Format: stateFormat}
	if lu.wceSaved.Load() {
		// Only a MODE SELECT with SP=1 saves WCE; until then the
		// configured write_cache setting stays in charge.
		wce := lu.savedWCE.Load()
		st.WCE = &wce
	}
	if lu.pr.APTPL {
		pr := lu.prSnapshotLocked()
		st.PR = &pr
	}
	b, err := json.MarshalIndent(&st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(lu.statePath)
	f, err := os.CreateTemp(dir, filepath.Base(lu.statePath)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, lu.statePath); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
