package metrics

import (
	"context"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
)

// Mounter times the device operations of m (mkfs, mount, bind, wipe) into
// the metrics; everything else goes to m unchanged.
func (m *Metrics) Mounter(inner mounter.Interface) mounter.Interface {
	if m == nil {
		return inner
	}
	return &timedMounter{Interface: inner, m: m}
}

type timedMounter struct {
	mounter.Interface
	m *Metrics
}

func (t *timedMounter) Format(ctx context.Context, device, fsType, uuid string, sizeBytes int64, extraArgs []string) error {
	start := time.Now()
	err := t.Interface.Format(ctx, device, fsType, uuid, sizeBytes, extraArgs)
	t.m.DeviceOperation("mkfs", fsType, time.Since(start), err)
	return err
}

func (t *timedMounter) Mount(device, target, fsType string, options []string) error {
	start := time.Now()
	err := t.Interface.Mount(device, target, fsType, options)
	t.m.DeviceOperation("mount", fsType, time.Since(start), err)
	return err
}

func (t *timedMounter) BindMount(source, target string, readOnly bool) error {
	start := time.Now()
	err := t.Interface.BindMount(source, target, readOnly)
	t.m.DeviceOperation("bind", "", time.Since(start), err)
	return err
}

func (t *timedMounter) Wipe(ctx context.Context, device string, policy mounter.CleanupPolicy, o mounter.WipeOptions) error {
	start := time.Now()
	err := t.Interface.Wipe(ctx, device, policy, o)
	t.m.DeviceOperation("wipe", string(policy), time.Since(start), err)
	return err
}
