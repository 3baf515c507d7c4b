package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"
)

// Store keeps the record in two files, state.json and its copy
// state.json.bak, each replaced crash-safely and one after the other. A
// damaged, truncated, deleted or older file is outvoted by the other copy;
// only when neither can be trusted does Load fail.
type Store struct {
	path string
	gen  uint64 // generation of the last record loaded or saved
}

// NewStore returns a store for the files state.json and state.json.bak in
// dir.
func NewStore(dir string) *Store {
	return &Store{path: filepath.Join(dir, "state.json")}
}

// Path is the main file the store writes.
func (s *Store) Path() string { return s.path }

// BackupPath is the copy written after the main file.
func (s *Store) BackupPath() string { return s.path + ".bak" }

// Load returns the newest copy of the record that decodes and passes its
// checksum. It gives (nil, nil) when neither file exists (the node never
// stored anything), and an error wrapping ErrCorrupt, naming both files and
// what an operator can do, when files exist but none can be trusted.
func (s *Store) Load() (*Record, error) {
	main, mainErr := readRecord(s.path)
	backup, backupErr := readRecord(s.BackupPath())
	var rec *Record
	switch {
	case main == nil && backup == nil:
		if mainErr == nil && backupErr == nil {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: no copy of the node state can be trusted (%s: %v; %s: %v); "+
			"the driver hands out no disk until an operator restores one of the files from a backup, "+
			"or checks every disk and removes both files, after which disks holding data are left alone and blank disks count as free",
			ErrCorrupt, s.path, orMissing(mainErr), s.BackupPath(), orMissing(backupErr))
	case backup == nil:
		rec = main
		if backupErr != nil {
			klog.ErrorS(backupErr, "Node state copy cannot be used; it is rewritten at the next change", "path", s.BackupPath())
		}
	case main == nil || backup.Generation > main.Generation:
		rec = backup
		why := "older than its copy"
		if main == nil {
			why = "missing"
			if mainErr != nil {
				why = mainErr.Error()
			}
		}
		klog.ErrorS(nil, "Node state file cannot be used, recovering from its copy", "path", s.path, "reason", why,
			"copy", s.BackupPath(), "generation", backup.Generation)
	default:
		rec = main
	}
	s.gen = rec.Generation
	return rec, nil
}

func orMissing(err error) any {
	if err == nil {
		return "missing"
	}
	return err
}

// readRecord reads and decodes one file; a missing file gives (nil, nil).
func readRecord(path string) (*Record, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return Decode(b)
}

// Save gives r the next generation and replaces both files crash-safely,
// the main file first: after a crash between the two, the main file is the
// newer and Load picks it.
func (s *Store) Save(r *Record) error {
	r.Generation = s.gen + 1
	b, err := Encode(r)
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(s.path, b); err != nil {
		return err
	}
	s.gen = r.Generation
	return WriteFileAtomic(s.BackupPath(), b)
}
