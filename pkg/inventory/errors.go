package inventory

import "errors"

// Sentinel errors of the inventory. pkg/driver maps each to one gRPC code.
var (
	// ErrNotReady: the inventory has not finished loading and reconciling.
	ErrNotReady = errors.New("disk inventory is not ready")
	// ErrNotFound: no volume with that ID or name lives on this node.
	ErrNotFound = errors.New("volume not found")
	// ErrExhausted: no matching disk is free now, though one could fit later.
	ErrExhausted = errors.New("no free disk matches")
	// ErrOutOfRange: no disk of this node could ever satisfy the request.
	ErrOutOfRange = errors.New("no disk on this node can satisfy the capacity range")
	// ErrExists: the name is taken by a volume with incompatible properties.
	ErrExists = errors.New("a volume with this name exists with different properties")
	// ErrInUse: the volume's device is still mounted.
	ErrInUse = errors.New("volume's device is in use")
	// ErrDeviceMissing: the disk holding the volume is not present now.
	ErrDeviceMissing = errors.New("volume's disk is not present on this node")
	// ErrIdentityMismatch: the device at the expected path is another disk.
	ErrIdentityMismatch = errors.New("device identity does not match the volume's disk")
)
