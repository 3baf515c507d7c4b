package inventory

import (
	"fmt"
	"sync"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// Saving the record costs a few fsyncs. Most changes are saved while
// inv.mu is held (commitLocked), so nothing sees them before they are on
// disk. Allocations, which come in bursts, are saved in groups instead: an
// allocation is applied in memory (applyLocked), numbered, and its caller
// waits outside the lock (flush) until a save that includes it is on disk,
// and only then reports it. One save covers every change applied before it
// started, so a burst of allocations on one node costs about two saves
// rather than one each.
//
// Saves never run two at a time (saver.saving), each writes the whole
// record, and a save of an older snapshot never follows a newer one: the
// files only move forward.

// saver tracks which numbered changes are on disk. Its lock is never held
// while waiting for inv.mu or while writing; a save in progress never waits
// for inv.mu either, so commitLocked may wait for it while holding inv.mu.
type saver struct {
	mu     sync.Mutex
	cond   *sync.Cond
	saving bool   // a save is being written
	saved  uint64 // the last change number on disk
}

func newSaver() *saver {
	s := &saver{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// begin waits until no save runs and claims the next one; it reports false
// (claiming nothing) when change upto is on disk already.
func (s *saver) begin(upto uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.saving {
		s.cond.Wait()
	}
	if s.saved >= upto {
		return false
	}
	s.saving = true
	return true
}

// end releases the save claimed by begin; on success, changes up to upto
// are on disk.
func (s *saver) end(upto uint64, ok bool) {
	s.mu.Lock()
	s.saving = false
	if ok && upto > s.saved {
		s.saved = upto
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

// done reports whether change n is on disk, and otherwise waits for the save
// under way, if any, to end (so that the caller looks again).
func (s *saver) done(n uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saved >= n {
		return true
	}
	if s.saving {
		s.cond.Wait()
	}
	return s.saved >= n
}

// applyLocked makes next the record in memory without saving it, and
// returns its change number for flush. inv.mu must be held.
func (inv *Inventory) applyLocked(next *state.Record) uint64 {
	inv.rec = next
	inv.changes++
	return inv.changes
}

// commitLocked saves next and only then makes it the record. inv.mu must
// be held; it stays held through the save.
func (inv *Inventory) commitLocked(next *state.Record) error {
	prev := inv.rec
	n := inv.applyLocked(next)
	if !inv.saver.begin(n) {
		return nil
	}
	took, err := inv.write(next)
	inv.saver.end(n, err == nil)
	inv.reportSaveLocked(took, err)
	if err != nil {
		// Changes applied before next (allocations waiting in flush) stay:
		// the next save carries them.
		inv.rec = prev
		return fmt.Errorf("saving node state: %w", err)
	}
	return nil
}

// flush returns once change n is on disk, saving the record as it is now
// unless a save under way or one started meanwhile covers n. inv.mu must
// not be held.
func (inv *Inventory) flush(n uint64) error {
	for !inv.saver.done(n) {
		inv.mu.Lock()
		rec, upto := inv.rec, inv.changes
		inv.mu.Unlock()
		if !inv.saver.begin(upto) {
			continue
		}
		took, err := inv.write(rec)
		inv.saver.end(upto, err == nil)
		inv.mu.Lock()
		inv.reportSaveLocked(took, err)
		inv.mu.Unlock()
		if err != nil {
			return fmt.Errorf("saving node state: %w", err)
		}
	}
	return nil
}

// write saves rec, through a shallow copy: the store numbers what it saves,
// and rec may be read meanwhile.
func (inv *Inventory) write(rec *state.Record) (time.Duration, error) {
	snap := *rec
	start := time.Now()
	if inv.beforeWrite != nil {
		if err := inv.beforeWrite(); err != nil {
			return time.Since(start), err
		}
	}
	err := inv.cfg.Store.Save(&snap)
	return time.Since(start), err
}

// reportSaveLocked tells the observer of a save, and that the record
// changed if it succeeded. inv.mu must be held.
func (inv *Inventory) reportSaveLocked(took time.Duration, err error) {
	inv.cfg.Observer.StateSaved(took, err)
	if err == nil {
		inv.cfg.Observer.Changed()
	}
}
