package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

// Tests of node and controller RPCs with input a kubelet or provisioner never
// sends. Each answer must be the exact code, with a message naming the field
// at fault, and nothing may reach the mounter.

const mib = 1 << 20

// wantRefused checks code and that the message holds every word.
func wantRefused(t *testing.T, err error, code codes.Code, words ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v; want code %s", err, code)
	}
	msg := status.Convert(err).Message()
	if len(msg) > 2048 {
		t.Fatalf("message of %d bytes: an answer quotes at most a bounded part of the request", len(msg))
	}
	for _, w := range words {
		if !strings.Contains(msg, w) {
			t.Fatalf("message %.300q does not mention %.80q", msg, w)
		}
	}
}

// quoted is how an answer names a string from the request: quoted, and
// cut to a bounded length (here its first 100 bytes of the quoted form).
func quoted(s string) string {
	q := strconv.Quote(s)
	return q[:min(len(q)-1, 100)]
}

// hostilePath is a staging or target path a kubelet never sends, with a word
// its refusal must hold besides the field name.
type hostilePath struct{ name, path, word string }

func hostilePaths(base string) []hostilePath {
	return []hostilePath{
		{"empty", "", "required"},
		{"relative", "rel/target", "absolute"},
		{"relative dot", "./target", "absolute"},
		{"dot-dot inside", base + "/a/../b", "clean"},
		{"dot-dot escape", base + "/../../../etc", "clean"},
		{"trailing dot-dot", base + "/a/..", "clean"},
		{"trailing dot", base + "/a/.", "clean"},
		{"double slash", base + "//a", "clean"},
		{"trailing NUL", base + "/a\x00", "control character"},
		{"NUL then escape", base + "/a\x00/../../../etc/passwd", "control character"},
		{"trailing newline", base + "/a\n", "control character"},
		{"trailing tab", base + "/a\t", "control character"},
		{"longer than PATH_MAX", "/" + strings.Repeat("d/", 2100) + "t", "at most 4095"},
		{"1 MiB", "/" + strings.Repeat("x", mib), "at most 4095"},
		{"component longer than NAME_MAX", base + "/" + strings.Repeat("n", 256), "at most 255"},
	}
}

// TestHostileNodePaths sends every hostile path as each path argument of
// every node RPC that takes one: INVALID_ARGUMENT naming the field, no
// mounter call, nothing created on the filesystem.
func TestHostileNodePaths(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	v := f.create("v", 0, nil)
	setupCalls := len(f.m.Calls()) // CreateVolume probed the disk before giving it out
	base := filepath.Join(f.dir, "kubelet")
	if err := os.Mkdir(base, 0o750); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(base, "good")
	rpcs := []struct {
		name, field string
		call        func(path string) error
	}{
		{"NodeStage mount", "staging_target_path", func(p string) error {
			_, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: p, VolumeCapability: testutil.MountCap("")})
			return err
		}},
		{"NodeStage block", "staging_target_path", func(p string) error {
			_, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: p, VolumeCapability: testutil.BlockCap()})
			return err
		}},
		{"NodePublish mount target", "target_path", func(p string) error {
			_, err := f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: good, TargetPath: p, VolumeCapability: testutil.MountCap("")})
			return err
		}},
		{"NodePublish block target", "target_path", func(p string) error {
			_, err := f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: good, TargetPath: p, VolumeCapability: testutil.BlockCap()})
			return err
		}},
		{"NodePublish staging", "staging_target_path", func(p string) error {
			_, err := f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: p, TargetPath: good, VolumeCapability: testutil.MountCap("")})
			return err
		}},
		{"NodeUnstage", "staging_target_path", func(p string) error {
			_, err := f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: p})
			return err
		}},
		{"NodeUnpublish", "target_path", func(p string) error {
			_, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: p})
			return err
		}},
	}
	for _, r := range rpcs {
		for _, hp := range hostilePaths(base) {
			t.Run(r.name+"/"+hp.name, func(t *testing.T) {
				wantRefused(t, r.call(hp.path), codes.InvalidArgument, r.field, hp.word)
			})
		}
	}
	if calls := f.m.Calls()[setupCalls:]; len(calls) != 0 {
		t.Fatalf("hostile paths reached the mounter: %q", calls)
	}
	if entries, _ := os.ReadDir(base); len(entries) != 0 {
		t.Fatalf("hostile paths created %v in %s", entries, base)
	}
	if _, err := os.Lstat("rel"); !os.IsNotExist(err) {
		t.Fatalf("a relative path was created in the working directory: %v", err)
	}
	// The same RPCs with sane paths, one with a trailing slash, still work.
	staging, target := good+"/", filepath.Join(base, "pod", "mount")
	if _, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: testutil.MountCap("")}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: testutil.MountCap("")}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

// TestHostileStatsPaths: NodeGetVolumeStats answers NOT_FOUND for any path
// where the volume is not, relative ones included (csi-sanity requires it),
// and names the path.
func TestHostileStatsPaths(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	v := f.create("v", 0, nil)
	for _, hp := range hostilePaths(filepath.Join(f.dir, "kubelet")) {
		t.Run(hp.name, func(t *testing.T) {
			_, err := f.d.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: hp.path})
			if hp.path == "" {
				wantRefused(t, err, codes.InvalidArgument, "volume_path")
				return
			}
			wantRefused(t, err, codes.NotFound, v.VolumeId, quoted(hp.path))
		})
	}
}

// TestHostileSymlinks uses real symbolic links: a staging or target path that
// is a link (to a directory or file outside the kubelet's tree, or dangling)
// is refused with INVALID_ARGUMENT naming the field before any mounter call,
// and what the link points to is left as it was. NodeUnpublish removes only
// what publish creates.
func TestHostileSymlinks(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD), fakeDisk(1, gib, disk.MediaSSD))
	ctx := context.Background()
	mountVol := f.create("fs", 0, nil)
	r, err := f.d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "raw", VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}})
	if err != nil {
		t.Fatal(err)
	}
	blockVol := r.Volume

	outside := filepath.Join(f.dir, "outside")
	secret := filepath.Join(outside, "secret")
	if err := os.Mkdir(outside, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	kubelet := filepath.Join(f.dir, "kubelet")
	staging := filepath.Join(kubelet, "staging")
	link := func(name, to string) string {
		p := filepath.Join(kubelet, name)
		if err := os.MkdirAll(kubelet, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(to, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	toDir, toFile, dangling := link("to-dir", outside), link("to-file", secret), link("dangling", filepath.Join(f.dir, "nowhere"))
	toStaging := link("to-staging", staging)

	// The real mount volume is staged at a real directory, so that a
	// publish refusal cannot come from a missing staging mount.
	if _, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: mountVol.VolumeId, StagingTargetPath: staging, VolumeCapability: testutil.MountCap("")}); err != nil {
		t.Fatal(err)
	}
	stage := func(id, p string, vc *csi.VolumeCapability) error {
		_, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: p, VolumeCapability: vc})
		return err
	}
	publish := func(id, s, p string, vc *csi.VolumeCapability) error {
		_, err := f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: s, TargetPath: p, VolumeCapability: vc})
		return err
	}
	unpublish := func(id, p string) error {
		_, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: p})
		return err
	}
	cases := []struct {
		name, field string
		call        func() error
	}{
		{"stage at link to dir", "staging_target_path", func() error { return stage(mountVol.VolumeId, toDir, testutil.MountCap("")) }},
		{"stage at dangling link", "staging_target_path", func() error { return stage(mountVol.VolumeId, dangling, testutil.MountCap("xfs")) }},
		{"stage block at link", "staging_target_path", func() error { return stage(blockVol.VolumeId, toDir, testutil.BlockCap()) }},
		{"publish mount onto link to dir", "target_path", func() error { return publish(mountVol.VolumeId, staging, toDir, testutil.MountCap("")) }},
		{"publish mount onto dangling link", "target_path", func() error { return publish(mountVol.VolumeId, staging, dangling, testutil.MountCap("")) }},
		{"publish mount from link to staging", "staging_target_path", func() error {
			return publish(mountVol.VolumeId, toStaging, filepath.Join(kubelet, "t1"), testutil.MountCap(""))
		}},
		{"publish block onto link to file", "target_path", func() error { return publish(blockVol.VolumeId, staging, toFile, testutil.BlockCap()) }},
		{"publish block onto link to dir", "target_path", func() error { return publish(blockVol.VolumeId, staging, toDir, testutil.BlockCap()) }},
		{"unpublish link to dir", "target_path", func() error { return unpublish(mountVol.VolumeId, toDir) }},
		{"unpublish file with data", "target_path", func() error { return unpublish(mountVol.VolumeId, secret) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := f.m.Calls()
			wantRefused(t, c.call(), codes.InvalidArgument, c.field)
			if after := f.m.Calls(); len(after) != len(before) {
				t.Fatalf("refused call reached the mounter: %q", after[len(before):])
			}
		})
	}
	if b, err := os.ReadFile(secret); err != nil || string(b) != "keep" {
		t.Fatalf("file behind the links changed: %q %v", b, err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Fatalf("directory behind the links changed: %v", entries)
	}
	for _, l := range []string{toDir, toFile, dangling, toStaging} {
		if fi, err := os.Lstat(l); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("link %s was replaced or removed: %v", l, err)
		}
	}
	infos, _ := f.m.MountInfo()
	if len(infos) != 1 || infos[0].MountPoint != staging {
		t.Fatalf("mounts besides the staging mount: %+v", infos)
	}
	// Real paths next to the links work, and unpublish removes what
	// publish made.
	for _, c := range []struct {
		id, target string
		vc         *csi.VolumeCapability
	}{
		{mountVol.VolumeId, filepath.Join(kubelet, "pod", "mount"), testutil.MountCap("")},
		{blockVol.VolumeId, filepath.Join(kubelet, "pod", "dev"), testutil.BlockCap()},
	} {
		if err := stage(c.id, staging, c.vc); err != nil {
			t.Fatal(err)
		}
		if err := publish(c.id, staging, c.target, c.vc); err != nil {
			t.Fatal(err)
		}
		if err := unpublish(c.id, c.target); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(c.target); !os.IsNotExist(err) {
			t.Fatalf("target %s left behind: %v", c.target, err)
		}
	}
}

// TestHostileCreateVolume: oversized names, huge parameter maps, unknown
// parameters, NUL bytes and shell text are refused with INVALID_ARGUMENT
// naming the field, allocate nothing and reach no tool.
func TestHostileCreateVolume(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	manyKnown, manyUnknown := map[string]string{}, map[string]string{}
	for i := 0; i < 10000; i++ {
		manyKnown[fmt.Sprintf("csi.storage.k8s.io/k%d", i)] = "v"
		manyUnknown[fmt.Sprintf("k%d", i)] = strings.Repeat("v", 100)
	}
	bigKey := strings.Repeat("k", mib)
	withCap := func(name string, vc *csi.VolumeCapability) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{vc}}
	}
	params := func(p map[string]string) *csi.CreateVolumeRequest { return createReq("pvc", 0, 0, p) }
	cases := []struct {
		name  string
		req   *csi.CreateVolumeRequest
		words []string
	}{
		{"name of 129 bytes", createReq(strings.Repeat("n", maxNameLength+1), 0, 0, nil), []string{"name:", "128"}},
		{"name of 1 MiB", createReq(strings.Repeat("n", mib), 0, 0, nil), []string{"name:"}},
		{"NUL in name", createReq("pvc-\x00-x", 0, 0, nil), []string{"name:", `\x00`}},
		{"newline in name", createReq("pvc\n", 0, 0, nil), []string{"name:"}},
		{"10000 sidecar keys", params(manyKnown), []string{"parameters:", "10000 keys"}},
		{"10000 unknown keys", params(manyUnknown), []string{"parameters:", "10000 keys"}},
		{"mkfsOptions of 1 MiB", params(map[string]string{ParamMkfsOptions: strings.Repeat("-m 0 ", mib/5)}), []string{`"mkfsOptions"`, "too long"}},
		{"sidecar value of 1 MiB", params(map[string]string{"csi.storage.k8s.io/pvc/name": strings.Repeat("p", mib)}), []string{`"csi.storage.k8s.io/pvc/name"`, "too long"}},
		{"key of 1 MiB", params(map[string]string{bigKey: "v"}), []string{fmt.Sprintf("%.40q", bigKey), "too long"}},
		{"unknown parameter", params(map[string]string{"mediaType": "ssd"}), []string{`"mediaType"`}},
		{"NUL in key", params(map[string]string{"media\x00": "ssd"}), []string{strconv.Quote("media\x00")}},
		{"NUL in media", params(map[string]string{ParamMedia: "ssd\x00"}), []string{ParamMedia, "NUL"}},
		{"NUL in cleanupPolicy", params(map[string]string{ParamCleanupPolicy: "zero\x00shred"}), []string{ParamCleanupPolicy}},
		{"NUL in mkfsOptions value", params(map[string]string{ParamMkfsOptions: "-L a\x00b"}), []string{ParamMkfsOptions}},
		{"NUL in sidecar value", params(map[string]string{"csi.storage.k8s.io/pvc/name": "a\x00b"}), []string{"csi.storage.k8s.io/pvc/name"}},
		{"shell in mkfsOptions", params(map[string]string{ParamMkfsOptions: "-L $(reboot)"}), []string{ParamMkfsOptions, "$(reboot)"}},
		{"backquotes in mkfsOptions", params(map[string]string{ParamMkfsOptions: "-L `id`"}), []string{ParamMkfsOptions}},
		{"second device in mkfsOptions", params(map[string]string{ParamMkfsOptions: "-L x /dev/vdb"}), []string{ParamMkfsOptions, "/dev/vdb"}},
		{"end of options then device", params(map[string]string{ParamMkfsOptions: "-- /dev/vdb"}), []string{ParamMkfsOptions}},
		{"value option inside a cluster", params(map[string]string{ParamMkfsOptions: "-qL -E -Lfoo"}), []string{ParamMkfsOptions, "-L"}},
		{"-E inside a cluster", params(map[string]string{ParamMkfsOptions: "-jE stride=8"}), []string{ParamMkfsOptions, "-E"}},
		{"unknown fstype", params(map[string]string{ParamFSType: "btrfs"}), []string{ParamFSType, "btrfs"}},
		{"NUL in fstype", params(map[string]string{ParamFSType: "ext4\x00"}), []string{ParamFSType}},
		{"unknown capability fs_type", withCap("pvc", testutil.MountCap("btrfs")), []string{"volume_capability", "fs_type"}},
		{"NUL in capability fs_type", withCap("pvc", testutil.MountCap("ext4\x00")), []string{"volume_capability", "fs_type"}},
		{"NUL in mount flag", withCap("pvc", testutil.MountCap("", "noatime\x00")), []string{"mount_flags"}},
		{"65 mount flags", withCap("pvc", testutil.MountCap("", strings.Split(strings.Repeat("noatime ", 65), " ")[:65]...)), []string{"mount_flags", "65"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.d.CreateVolume(ctx, c.req)
			wantRefused(t, err, codes.InvalidArgument, c.words...)
		})
	}
	_, err := f.d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: manyUnknown})
	wantRefused(t, err, codes.InvalidArgument, "parameters:", "10000 keys")
	if vols, _ := f.inv.Volumes(); len(vols) != 0 {
		t.Fatalf("refused requests allocated %v", vols)
	}
	if calls := f.m.Calls(); len(calls) != 0 {
		t.Fatalf("refused requests reached the mounter: %q", calls)
	}
	// The limits themselves are accepted.
	longest := strings.Repeat("n", maxNameLength)
	if _, err := f.d.CreateVolume(ctx, createReq(longest, 0, 0, map[string]string{ParamMkfsOptions: "-L data -O ^has_journal -E stride=8"})); err != nil {
		t.Fatalf("a %d-byte name: %v", maxNameLength, err)
	}
}

// TestHostileVolumeIDs: IDs of other nodes, stale, malformed, oversized or
// holding NUL bytes are NOT_FOUND (naming the ID) where the CSI spec says a
// missing volume is, and OK where it says an absent volume is done
// (DeleteVolume, NodeUnstage, NodeUnpublish); an empty ID is INVALID_ARGUMENT.
// None of them touches the real volume or the mounter.
func TestHostileVolumeIDs(t *testing.T) {
	f := newFixture(t, fakeDisk(0, gib, disk.MediaSSD))
	ctx := context.Background()
	v := f.create("v", 0, nil)
	setupCalls := len(f.m.Calls()) // CreateVolume probed the disk before giving it out
	nonce := v.VolumeId[strings.LastIndexByte(v.VolumeId, ':')+1:]
	stale := "000000000000"
	if nonce == stale {
		stale = "000000000001"
	}
	// A nonce of digits only has no upper-case form (about 1 run in 280):
	// put an upper-case letter in it so the case still differs from the real ID.
	upper := strings.ToUpper(nonce)
	if upper == nonce {
		upper = "A" + nonce[1:]
	}
	ids := map[string]string{
		"other node":          strings.Replace(v.VolumeId, "ld:"+testNode+":", "ld:node-2:", 1),
		"stale nonce":         strings.TrimSuffix(v.VolumeId, nonce) + stale,
		"unknown disk":        "ld:" + testNode + ":serial-D9:" + nonce,
		"no nonce":            strings.TrimSuffix(v.VolumeId, ":"+nonce),
		"extra field":         v.VolumeId + ":x",
		"upper-case nonce":    strings.TrimSuffix(v.VolumeId, nonce) + upper,
		"trailing NUL":        v.VolumeId + "\x00",
		"trailing newline":    v.VolumeId + "\n",
		"path":                "../../../etc/passwd",
		"200 bytes":           "ld:" + testNode + ":" + strings.Repeat("d", 180) + ":" + nonce,
		"1 MiB":               strings.Repeat("x", mib),
		"other driver's form": "pvc-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e",
	}
	staging, target := filepath.Join(f.dir, "staging"), filepath.Join(f.dir, "target")
	for name, id := range ids {
		t.Run(name, func(t *testing.T) {
			_, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: testutil.MountCap("")})
			wantRefused(t, err, codes.NotFound, quoted(id))
			_, err = f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: testutil.BlockCap()})
			wantRefused(t, err, codes.NotFound, quoted(id))
			_, err = f.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("")}})
			wantRefused(t, err, codes.NotFound, quoted(id))
			_, err = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			wantRefused(t, err, codes.NotFound, quoted(id))
			if _, err := f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
				t.Fatalf("NodeUnpublish: %v", err)
			}
			if _, err := f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
				t.Fatalf("NodeUnstage: %v", err)
			}
			if _, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatalf("DeleteVolume: %v", err)
			}
		})
	}
	t.Run("empty", func(t *testing.T) {
		_, err := f.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{StagingTargetPath: staging, VolumeCapability: testutil.MountCap("")})
		wantRefused(t, err, codes.InvalidArgument, "volume_id")
		_, err = f.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{StagingTargetPath: staging, TargetPath: target, VolumeCapability: testutil.MountCap("")})
		wantRefused(t, err, codes.InvalidArgument, "volume_id")
		_, err = f.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("")}})
		wantRefused(t, err, codes.InvalidArgument, "volume_id")
		_, err = f.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumePath: target})
		wantRefused(t, err, codes.InvalidArgument, "volume_id")
		_, err = f.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{TargetPath: target})
		wantRefused(t, err, codes.InvalidArgument, "volume_id")
		_, err = f.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{StagingTargetPath: staging})
		wantRefused(t, err, codes.InvalidArgument, "volume_id")
		_, err = f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
		wantRefused(t, err, codes.InvalidArgument, "volume_id")
	})
	if _, err := f.inv.Lookup(v.VolumeId); err != nil {
		t.Fatalf("the real volume was touched: %v", err)
	}
	if calls := f.m.Calls()[setupCalls:]; len(calls) != 0 {
		t.Fatalf("unknown volume IDs reached the mounter: %q", calls)
	}
	for _, p := range []string{staging, target} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("%s was created for an unknown volume: %v", p, err)
		}
	}
}
