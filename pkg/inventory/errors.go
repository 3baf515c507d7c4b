package inventory

import (
	"errors"
	"fmt"
)

// Sentinel errors of the inventory. pkg/driver maps each to one gRPC code.
var (
	// ErrNotReady: the inventory has not finished loading and reconciling.
	ErrNotReady = errors.New("disk inventory is not ready")
	// ErrNotFound: no volume with that ID or name lives on this node.
	ErrNotFound = errors.New("volume not found")
	// ErrExhausted: no matching disk is free now, though one could fit later.
	ErrExhausted = errors.New("no free disk matches")
	// ErrOutOfRange: no disk of this node could ever satisfy the request.
	// It is an ErrExhausted: in this per-node design, only that answer
	// makes the provisioner try another node, where a disk may fit.
	ErrOutOfRange = fmt.Errorf("%w: no disk on this node can satisfy the capacity range", ErrExhausted)
	// ErrBusy: work the call needs is still running (a zeroing); retry.
	ErrBusy = errors.New("operation in progress")
	// ErrExists: the name is taken by a volume with incompatible properties.
	ErrExists = errors.New("a volume with this name exists with different properties")
	// ErrInUse: the device is mounted, its node bound, or claimed.
	ErrInUse = errors.New("device is in use")
	// ErrForeign: the device holds data the driver did not put there.
	ErrForeign = errors.New("disk holds data the driver did not put there")
	// ErrDataGone: the volume's filesystem was complete, and the device
	// no longer carries it.
	ErrDataGone = errors.New("the volume's filesystem is gone from its disk")
	// ErrDeviceMissing: the disk holding the volume is not present now.
	ErrDeviceMissing = errors.New("volume's disk is not present on this node")
	// ErrIdentityMismatch: the device at the expected path is another disk.
	ErrIdentityMismatch = errors.New("device identity does not match the volume's disk")
)
