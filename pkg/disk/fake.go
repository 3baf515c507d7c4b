package disk

import (
	"context"
	"fmt"
	"sync"
)

// FakeSource is an in-memory Source for unit tests: the test sets the disks
// it returns and may swap or remove them between calls.
type FakeSource struct {
	mu    sync.Mutex
	disks []Disk
	// Err, when set, fails Discover.
	Err error
}

// NewFakeSource returns a source listing disks.
func NewFakeSource(disks ...Disk) *FakeSource {
	return &FakeSource{disks: append([]Disk(nil), disks...)}
}

// Set replaces the listed disks.
func (f *FakeSource) Set(disks ...Disk) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disks = append([]Disk(nil), disks...)
}

// Discover returns the disks set last.
func (f *FakeSource) Discover(context.Context) ([]Disk, []error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return nil, nil, f.Err
	}
	return append([]Disk(nil), f.disks...), nil, nil
}

// Identify returns the identity of the disk now listed at path.
func (f *FakeSource) Identify(_ context.Context, path string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.disks {
		if d.Path == path {
			return d.ID, d.Identity, nil
		}
	}
	return "", "", fmt.Errorf("no device at %s", path)
}
