// Command demo runs the driver binary on three loop-device disks (no cloud
// needed) and walks volumes through their whole life as the kubelet and the
// provisioner would: capacity, create, format and mount, write, re-stage with
// data intact, raw block, delete, clean. It needs root. It removes everything
// it made: the driver is stopped by its PID, mounts undone, loops detached.
//
// With --disk-source=ecs the driver discovers the same disks through the ECS
// source, talking to a fake ECS (metadata server and OpenAPI on loopback) that
// lists the loop devices as the instance's local disks.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	node     = "demo-node"
	diskSize = 1 << 30 // sparse: costs no space until written
)

func main() {
	driverBin := flag.String("driver", "bin/ecs-localdisk-csi", "driver binary to run")
	keep := flag.Bool("keep", false, "leave the driver running on its disks until interrupted")
	source := flag.String("disk-source", "static", "static, or ecs against a fake ECS on loopback")
	flag.Parse()
	if *source != "static" && *source != "ecs" {
		fmt.Fprintln(os.Stderr, "--disk-source must be static or ecs")
		os.Exit(2)
	}
	logPath, err := run(*driverBin, *source, *keep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		if logPath != "" {
			fmt.Fprintln(os.Stderr, "driver log kept at", logPath)
		}
		os.Exit(1)
	}
	fmt.Printf("demo finished: every step passed, everything cleaned up but the driver log, %s\n", logPath)
}

type demo struct {
	source string
	dir    string
	log    string // outside dir: kept when the rest is cleaned up
	loops  []string
	media  []string
	fake   *cloud.Fake
	cmd    *exec.Cmd
	conn   *grpc.ClientConn
	ctl    csi.ControllerClient
	nd     csi.NodeClient
}

// run walks the demo and returns the path of the driver's log, which it
// keeps (in the temporary directory, not in the demo's own).
func run(driverBin, source string, keep bool) (logPath string, err error) {
	if os.Geteuid() != 0 {
		return "", errors.New("needs root (loop devices, mkfs, mount)")
	}
	d := &demo{source: source}
	defer d.cleanup()
	err = d.walk(driverBin, keep)
	return d.log, err
}

func (d *demo) walk(driverBin string, keep bool) (err error) {
	if d.dir, err = os.MkdirTemp("", "localdisk-demo-"); err != nil {
		return err
	}
	for i, media := range []string{"ssd", "ssd", "hdd"} {
		loop, err := makeLoop(d.dir, i, media)
		if err != nil {
			return err
		}
		d.loops, d.media = append(d.loops, loop), append(d.media, media)
		step("disk %d: %s, 1 GiB sparse, %s", i, loop, media)
	}
	if d.source == "ecs" {
		d.startFakeECS()
	}
	if err := d.start(driverBin); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.showNode(ctx); err != nil {
		return err
	}
	if err := d.filesystemVolume(ctx); err != nil {
		return err
	}
	if err := d.blockVolume(ctx); err != nil {
		return err
	}
	if err := d.waitAllFree(ctx); err != nil {
		return err
	}
	if keep {
		step("driver left running at unix://%s; press Ctrl-C to stop", filepath.Join(d.dir, "csi.sock"))
		ch := make(chan os.Signal, 1)
		signalNotify(ch)
		<-ch
	}
	return nil
}

// startFakeECS lists the loop devices as the local disks of a fake instance;
// a loop device's serial, as the ECS source sees it, is its backing file.
func (d *demo) startFakeECS() {
	d.fake = cloud.NewFake(cloud.Instance{ID: "i-demo", Type: "ecs.i4.demo", Region: "cn-hangzhou", Zone: "cn-hangzhou-k"})
	d.fake.TokenMode = true
	d.fake.Types["ecs.i4.demo"] = cloud.InstanceType{LocalStorageAmount: len(d.loops), LocalStorageGiB: 1, LocalStorageCategory: "local_ssd_pro"}
	for i, loop := range d.loops {
		backing, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop/backing_file"))
		cat := map[string]string{"ssd": "local_ssd_pro", "hdd": "local_hdd_pro"}[d.media[i]]
		d.fake.Disks = append(d.fake.Disks, cloud.FakeDisk{ID: fmt.Sprintf("d-demo%d", i), Category: cat, InstanceID: "i-demo",
			Serial: strings.TrimSpace(string(backing)), SizeGiB: 1})
	}
	d.fake.Disks = append(d.fake.Disks, cloud.FakeDisk{ID: "d-demosystem", Category: "cloud_essd", InstanceID: "i-demo", SizeGiB: 40})
	step("fake ECS: metadata %s, OpenAPI %s; instance i-demo lists %d local disks", d.fake.Metadata.URL, d.fake.API.URL, len(d.loops))
}

func step(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

func makeLoop(dir string, i int, media string) (string, error) {
	img := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return "", err
	}
	if err := os.Truncate(img, diskSize); err != nil {
		return "", err
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	rot := map[string]string{"ssd": "0", "hdd": "1"}[media]
	return loop, os.WriteFile(filepath.Join("/sys/block", filepath.Base(loop), "queue/rotational"), []byte(rot), 0o644)
}

func (d *demo) start(bin string) error {
	sock := filepath.Join(d.dir, "csi.sock")
	d.cmd = exec.Command(bin, "--endpoint=unix://"+sock, "--node-id="+node,
		"--state-dir="+filepath.Join(d.dir, "state"), "--devices="+strings.Join(d.loops, ","), "--v=2")
	if d.fake != nil {
		d.cmd.Args = append(d.cmd.Args, "--disk-source=ecs", "--metadata-endpoint="+d.fake.Metadata.URL, "--ecs-endpoint="+d.fake.API.URL)
		d.cmd.Env = append(os.Environ(), "ALIBABA_CLOUD_ACCESS_KEY_ID=LTAIdemo", "ALIBABA_CLOUD_ACCESS_KEY_SECRET=demo-secret")
	}
	logf, err := os.CreateTemp("", "localdisk-demo-driver-*.log")
	if err != nil {
		return err
	}
	defer logf.Close() // the driver has its own descriptor
	d.log = logf.Name()
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	step("driver started, pid %d, log %s", d.cmd.Process.Pid, logf.Name())
	if d.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return err
	}
	d.ctl, d.nd = csi.NewControllerClient(d.conn), csi.NewNodeClient(d.conn)
	id := csi.NewIdentityClient(d.conn)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := id.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			info, _ := id.GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
			step("driver ready: %s %s", info.GetName(), info.GetVendorVersion())
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("driver not ready within 30s; see its log")
}

func (d *demo) showNode(ctx context.Context) error {
	info, err := d.nd.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return err
	}
	step("NodeGetInfo: node %s, max_volumes_per_node %d, topology %v", info.NodeId, info.MaxVolumesPerNode, info.AccessibleTopology.Segments)
	key := "media"
	values := []string{"ssd", "hdd", "any"}
	if d.fake != nil {
		key, values = "diskCategory", []string{"local_ssd_pro", "local_hdd_pro", "any"}
	}
	for _, v := range values {
		c, err := d.ctl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{key: v}, AccessibleTopology: info.AccessibleTopology})
		if err != nil {
			return err
		}
		step("GetCapacity %s=%s: available %d MiB, largest disk %d MiB", key, v, c.AvailableCapacity>>20, c.GetMaximumVolumeSize().GetValue()>>20)
	}
	return nil
}

func (d *demo) filesystemVolume(ctx context.Context) error {
	vc := testutil.MountCap("ext4", "noatime")
	params := map[string]string{"media": "ssd", "mkfsOptions": "-m 0 -L demo", "cleanupPolicy": "zero"}
	cv, err := d.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-demo-fs", Parameters: params,
		VolumeCapabilities: []*csi.VolumeCapability{vc}, CapacityRange: &csi.CapacityRange{RequiredBytes: 512 << 20}})
	if err != nil {
		return err
	}
	v := cv.Volume
	step("CreateVolume pvc-demo-fs (ssd, ext4, mkfsOptions %q): %s, %d MiB, disk %s", params["mkfsOptions"], v.VolumeId, v.CapacityBytes>>20, v.VolumeContext["diskIdentity"])
	if id := v.VolumeContext["ecsDiskId"]; id != "" {
		step("volume context names the ECS disk: ecsDiskId=%s diskCategory=%s", id, v.VolumeContext["diskCategory"])
	}
	staging, target := filepath.Join(d.dir, "staging-fs"), filepath.Join(d.dir, "pods/fs/mount")
	stage := &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: vc, VolumeContext: v.VolumeContext}
	publish := &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, VolumeContext: v.VolumeContext}
	if _, err := d.nd.NodeStageVolume(ctx, stage); err != nil {
		return err
	}
	if _, err := d.nd.NodePublishVolume(ctx, publish); err != nil {
		return err
	}
	step("staged (mkfs.ext4 on the blank disk, mounted noatime) and published at %s", target)
	if err := showMount(target); err != nil {
		return err
	}
	payload := []byte("written by the demo at " + time.Now().Format(time.RFC3339) + "\n")
	if err := os.WriteFile(filepath.Join(target, "hello.txt"), payload, 0o644); err != nil {
		return err
	}
	st, err := d.nd.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: target})
	if err != nil {
		return err
	}
	step("NodeGetVolumeStats: %d MiB total, %d KiB used, %d inodes; condition abnormal=%v", st.Usage[0].Total>>20, st.Usage[0].Used>>10, st.Usage[1].Total, st.VolumeCondition.GetAbnormal())
	if err := d.unpublishUnstage(ctx, v.VolumeId, target, staging); err != nil {
		return err
	}
	step("unpublished and unstaged; staging again (no format this time)")
	if _, err := d.nd.NodeStageVolume(ctx, stage); err != nil {
		return err
	}
	if _, err := d.nd.NodePublishVolume(ctx, publish); err != nil {
		return err
	}
	got, err := os.ReadFile(filepath.Join(target, "hello.txt"))
	if err != nil || !bytes.Equal(got, payload) {
		return fmt.Errorf("data not intact after re-stage: %q %v", got, err)
	}
	step("data intact after re-stage: %q", strings.TrimSpace(string(got)))
	if err := d.unpublishUnstage(ctx, v.VolumeId, target, staging); err != nil {
		return err
	}
	if _, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		return err
	}
	step("DeleteVolume %s: disk is being zeroed in the background", v.VolumeId)
	return nil
}

func (d *demo) blockVolume(ctx context.Context) error {
	vc := testutil.BlockCap()
	cv, err := d.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-demo-block", Parameters: map[string]string{"media": "hdd"},
		VolumeCapabilities: []*csi.VolumeCapability{vc}})
	if err != nil {
		return err
	}
	v := cv.Volume
	step("CreateVolume pvc-demo-block (hdd, raw block): %s on %s", v.VolumeId, v.VolumeContext["diskIdentity"])
	staging, target := filepath.Join(d.dir, "staging-block"), filepath.Join(d.dir, "pods/block/dev")
	if _, err := d.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
		return err
	}
	if _, err := d.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	msg := []byte("raw bytes at offset 1 MiB")
	_, err = f.WriteAt(msg, 1<<20)
	if err == nil {
		err = f.Sync()
	}
	buf := make([]byte, len(msg))
	if err == nil {
		_, err = f.ReadAt(buf, 1<<20)
	}
	f.Close()
	if err != nil || !bytes.Equal(buf, msg) {
		return fmt.Errorf("block read-back failed: %q %v", buf, err)
	}
	step("published the device at %s; wrote and read back %q", target, msg)
	if err := d.unpublishUnstage(ctx, v.VolumeId, target, staging); err != nil {
		return err
	}
	if _, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
		return err
	}
	step("DeleteVolume %s: signatures wiped in the background", v.VolumeId)
	return nil
}

func (d *demo) unpublishUnstage(ctx context.Context, id, target, staging string) error {
	if _, err := d.nd.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		return err
	}
	_, err := d.nd.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	return err
}

func (d *demo) waitAllFree(ctx context.Context) error {
	for {
		c, err := d.ctl.GetCapacity(ctx, &csi.GetCapacityRequest{})
		if err != nil {
			return err
		}
		if c.AvailableCapacity == int64(len(d.loops))*diskSize {
			step("all %d disks clean and free again: %d MiB available", len(d.loops), c.AvailableCapacity>>20)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("disks not free again: %d MiB available", c.AvailableCapacity>>20)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func showMount(target string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[4] == target {
			step("mountinfo: %s %s", f[4], f[5])
		}
	}
	return nil
}

func (d *demo) cleanup() {
	if d.conn != nil {
		d.conn.Close()
	}
	defer func() {
		if d.fake != nil {
			d.fake.Close()
		}
	}()
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = d.cmd.Process.Kill()
			<-done
		}
	}
	if d.dir != "" {
		if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], d.dir+"/") {
					_ = syscall.Unmount(f[4], 0)
				}
			}
		}
	}
	for _, l := range d.loops {
		_ = exec.Command("losetup", "--detach", l).Run()
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}
