package cluster

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"
)

// No registry is reachable from the real nodes: every image a pod of the
// suite runs is built here, from Debian's busybox-static and binaries of
// this machine, and imported into the node's containerd with
// `ctr images import`.

// BusyboxImage is the image the suite's own pods run. It is the pause
// image too, so its default command sleeps.
const BusyboxImage = "docker.io/library/busybox:1.36"

// The images Kubernetes' e2e storage tests (test/e2e/storage/testsuites,
// run with -storage.testdriver) give their pods, by the names
// k8s.io/kubernetes/test/utils/image (manifest.go) has at v1.36.1. Only
// agnhost is the real program; the others are stand-ins built from busybox,
// enough for what those tests run in them (see each image's function).
const (
	E2EBusyboxImage      = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
	AgnhostImage         = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"
	NginxImage           = "registry.k8s.io/e2e-test-images/nginx:1.15-4"
	GlibcDNSTestingImage = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0"
	PauseImage           = "registry.k8s.io/pause:3.10.2"
)

// TestImages names the images WriteTestImages writes.
var TestImages = []string{E2EBusyboxImage, AgnhostImage, NginxImage, GlibcDNSTestingImage, PauseImage}

// Where the images' programs come from on this machine: Debian's
// busybox-static, coreutils and dash.
const (
	hostBusybox = "/bin/busybox"
	hostGNUDD   = "/usr/bin/dd"
	hostDash    = "/usr/bin/dash"
)

// The PATH of Debian's and Alpine's images.
const imagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ociImage is one image of an archive: layers are uncompressed tars,
// lowest first.
type ociImage struct {
	name       string
	layers     [][]byte
	entrypoint []string
	cmd        []string
}

// buildBusyboxOCI writes an OCI image archive holding /bin/busybox and a
// link per applet, tagged BusyboxImage.
func buildBusyboxOCI(busybox, out string) error {
	base, err := busyboxLayer(busybox)
	if err != nil {
		return err
	}
	// As the pause image: PID 1 sleeps until the sandbox is killed.
	img := ociImage{name: BusyboxImage, layers: [][]byte{base}, cmd: []string{"/bin/sleep", "2147483647"}}
	return writeOCIArchive(out, []ociImage{img})
}

// WriteTestImages writes one OCI archive holding every image of
// TestImages, agnhost being the binary at agnhost (make e2e-bins builds it,
// static, from k8s.io/kubernetes/test/images/agnhost). One `ctr images
// import` of it brings them all.
func WriteTestImages(out, agnhost string) error {
	base, err := busyboxLayer(hostBusybox)
	if err != nil {
		return err
	}
	var images []ociImage
	for _, build := range []func([]byte) (ociImage, error){
		e2eBusybox,
		func(base []byte) (ociImage, error) { return agnhostImage(base, agnhost) },
		nginxStandIn,
		glibcDNSTestingStandIn,
		pauseStandIn,
	} {
		img, err := build(base)
		if err != nil {
			return err
		}
		images = append(images, img)
	}
	return writeOCIArchive(out, images)
}

// e2eBusybox is Debian's busybox under the suite's busybox name, with the
// upstream image's default command. The storage tests run sh scripts in
// it (dd, sha256sum, base64, stat -f, blockdev --getss, mount | grep, ...),
// all applets of this busybox too.
func e2eBusybox(base []byte) (ociImage, error) {
	return ociImage{name: E2EBusyboxImage, layers: [][]byte{base}, cmd: []string{"sh"}}, nil
}

// agnhostImage is the real agnhost, laid out as its Dockerfile
// (test/images/agnhost/Dockerfile) does: /agnhost, the /agnhost-2 link
// the entrypoint tests use, /uploads for netexec, the user and group the
// supplemental-groups tests expect; ENTRYPOINT ["/agnhost"], CMD ["pause"].
// Upstream's Alpine base gives it a shell and nsenter, which the storage
// tests' host-exec pods run (nsenter --mount=/rootfs/proc/1/ns/mnt -- sh):
// busybox's applets give the same. Its Alpine packages (curl, dig, iperf,
// ...) and the fake registry serve network tests only.
func agnhostImage(base []byte, agnhost string) (ociImage, error) {
	bin, err := os.ReadFile(agnhost)
	if err != nil {
		return ociImage{}, fmt.Errorf("agnhost (make e2e-bins builds it): %w", err)
	}
	l := newLayer()
	l.file("agnhost", 0o755, bin)
	// make e2e-bins builds it with cgo as the Kubernetes binaries are, so
	// that it shares their build cache: its glibc comes along.
	libs, err := sharedLibraries(agnhost)
	if err != nil {
		return ociImage{}, err
	}
	for _, f := range libs {
		if err := addHostFile(l, strings.TrimPrefix(f, "/"), f); err != nil {
			return ociImage{}, err
		}
	}
	l.symlink("agnhost-2", "agnhost")
	l.dir("uploads", 0o755)
	l.file("etc/passwd", 0o644, []byte(passwd+"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"))
	l.file("etc/group", 0o644, []byte(group+"user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"))
	top, err := l.bytes()
	if err != nil {
		return ociImage{}, err
	}
	return ociImage{name: AgnhostImage, layers: [][]byte{base, top}, entrypoint: []string{"/agnhost"}, cmd: []string{"pause"}}, nil
}

// nginxStandIn stands in for nginx. The storage tests use it in one place
// (testsuites/volumes.go, "should allow exec of files on the volume"): a
// /bin/sh -ec script that writes a script to the volume, chmods and runs
// it; nginx itself never runs. Run without a command, busybox's httpd
// serves /usr/share/nginx/html on port 80 in the foreground, as nginx would.
func nginxStandIn(base []byte) (ociImage, error) {
	l := newLayer()
	l.file("usr/share/nginx/html/index.html", 0o644, []byte("<p>busybox httpd, standing in for nginx</p>\n"))
	top, err := l.bytes()
	if err != nil {
		return ociImage{}, err
	}
	return ociImage{name: NginxImage, layers: [][]byte{base, top},
		cmd: []string{"httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"}}, nil
}

// glibcDNSTestingStandIn stands in for glibc-dns-testing (Debian with
// dnsutils upstream). The storage tests use it for the multi-pod tests
// (testsuites/multivolume.go): pods that sleep, into which the test execs
// /bin/sh -c with dd, sha256sum, base64 -d, blockdev --getss and test. They
// chose it for GNU dd: on block volumes they write with oflag=nocache,
// which busybox's dd refuses. So it is busybox with this machine's GNU dd,
// and its dash as /bin/sh as in Debian (busybox's sh runs its own applets
// before any program of PATH, so it would never reach GNU dd), with the
// glibc they load. Its DNS tools serve network tests only.
func glibcDNSTestingStandIn(base []byte) (ociImage, error) {
	l := newLayer()
	// Over the busybox layer's links of the same names.
	programs := map[string]string{"bin/dd": hostGNUDD, "bin/sh": hostDash}
	var libs []string
	for _, name := range []string{"bin/dd", "bin/sh"} {
		if err := addHostFile(l, name, programs[name]); err != nil {
			return ociImage{}, err
		}
		files, err := sharedLibraries(programs[name])
		if err != nil {
			return ociImage{}, err
		}
		libs = append(libs, files...)
	}
	slices.Sort(libs)
	for _, f := range slices.Compact(libs) {
		if err := addHostFile(l, strings.TrimPrefix(f, "/"), f); err != nil {
			return ociImage{}, err
		}
	}
	top, err := l.bytes()
	if err != nil {
		return ociImage{}, err
	}
	return ociImage{name: GlibcDNSTestingImage, layers: [][]byte{base, top}, cmd: []string{"sh"}}, nil
}

// addHostFile adds this machine's file src (links followed) to l as name.
func addHostFile(l *layer, name, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	l.file(name, 0o755, b)
	return nil
}

// sharedLibraries lists the files the dynamic loader maps for bin (the
// loader included), as ldd prints them; none for a static binary.
func sharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if strings.Contains(string(out), "not a dynamic executable") {
		return nil, nil // static: nothing to map
	}
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, out)
	}
	var files []string
	for _, line := range strings.Split(string(out), "\n") {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				files = append(files, f)
			}
		}
	}
	return files, nil
}

// pauseStandIn stands in for the pause image, which the storage tests do
// not run (their pods' sandboxes are containerd's sandbox_image) but other
// suites and node setups name. Like the pause binary, /pause sleeps until
// SIGTERM or SIGINT and then exits 0; as PID 1, the shell reaps orphans.
func pauseStandIn(base []byte) (ociImage, error) {
	l := newLayer()
	l.file("pause", 0o755, []byte("#!/bin/sh\n# busybox standing in for the pause binary\ntrap 'exit 0' TERM INT\nwhile :; do sleep 2147483647 & wait $!; done\n"))
	top, err := l.bytes()
	if err != nil {
		return ociImage{}, err
	}
	return ociImage{name: PauseImage, layers: [][]byte{base, top}, entrypoint: []string{"/pause"}}, nil
}

// The accounts of every image; agnhost adds its own.
const (
	passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group  = "root:x:0:\nnogroup:x:65534:\n"
)

// busyboxLayer is the base layer of every image: /bin/busybox, a link per
// applet, the accounts, and the directories a container expects.
func busyboxLayer(busybox string) ([]byte, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("busybox-static: %w", err)
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	l := newLayer()
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "data", "root"} {
		l.dir(d, 0o755)
	}
	// Writable by all, as in any image: tests may run as non-root.
	l.dir("tmp", 0o1777)
	l.file("etc/passwd", 0o644, []byte(passwd))
	l.file("etc/group", 0o644, []byte(group))
	l.file("bin/busybox", 0o755, bin)
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" && !strings.Contains(applet, "/") {
			l.symlink("bin/"+applet, "busybox")
		}
	}
	return l.bytes()
}

// layer builds an uncompressed layer tar; the first error sticks and
// bytes returns it. Parent directories are added as needed.
type layer struct {
	buf  bytes.Buffer
	tw   *tar.Writer
	dirs map[string]bool
	err  error
}

func newLayer() *layer {
	l := &layer{dirs: map[string]bool{}}
	l.tw = tar.NewWriter(&l.buf)
	return l
}

// Fixed times, so an image's digest depends on its content only.
var layerTime = time.Unix(0, 0)

func (l *layer) add(h *tar.Header, body []byte) {
	if l.err != nil {
		return
	}
	h.ModTime = layerTime
	if l.err = l.tw.WriteHeader(h); l.err == nil && len(body) > 0 {
		_, l.err = l.tw.Write(body)
	}
}

func (l *layer) parents(name string) {
	if d := path.Dir(name); d != "." && !l.dirs[d] {
		l.dir(d, 0o755)
	}
}

func (l *layer) dir(name string, mode int64) {
	l.parents(name)
	l.dirs[name] = true
	l.add(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: mode}, nil)
}

func (l *layer) file(name string, mode int64, body []byte) {
	l.parents(name)
	l.add(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body))}, body)
}

func (l *layer) symlink(name, target string) {
	l.parents(name)
	l.add(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}, nil)
}

func (l *layer) bytes() ([]byte, error) {
	if l.err != nil {
		return nil, l.err
	}
	if err := l.tw.Close(); err != nil {
		return nil, err
	}
	return l.buf.Bytes(), nil
}

// writeOCIArchive writes an OCI image layout as a tar: an index with one
// manifest per image, each annotated with the image's name, which is how
// `ctr images import` names what it imports. Images share their common
// layers' blobs.
func writeOCIArchive(out string, images []ociImage) error {
	blobs := map[string][]byte{}
	var order []string
	blob := func(mediaType string, b []byte) map[string]any {
		d := descriptor(mediaType, b)
		if _, ok := blobs[d["digest"].(string)]; !ok {
			blobs[d["digest"].(string)] = b
			order = append(order, d["digest"].(string))
		}
		return d
	}
	var manifests []any
	for _, img := range images {
		md, err := imageManifest(img, blob)
		if err != nil {
			return err
		}
		manifests = append(manifests, md)
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
	if err != nil {
		return err
	}
	files := []archiveFile{{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {"index.json", index}}
	for _, dg := range order {
		files = append(files, archiveFile{"blobs/sha256/" + strings.TrimPrefix(dg, "sha256:"), blobs[dg]})
	}
	return writeTar(out, []string{"blobs", "blobs/sha256"}, files)
}

// imageManifest adds img's layers, config and manifest as blobs and
// returns the manifest's descriptor for the index.
func imageManifest(img ociImage, blob func(string, []byte) map[string]any) (map[string]any, error) {
	var layers []any
	var diffIDs []string
	for _, l := range img.layers {
		layers = append(layers, blob("application/vnd.oci.image.layer.v1.tar", l))
		diffIDs = append(diffIDs, digest(l))
	}
	cfg := map[string]any{"Env": []string{imagePath}, "WorkingDir": "/"}
	if img.entrypoint != nil {
		cfg["Entrypoint"] = img.entrypoint
	}
	if img.cmd != nil {
		cfg["Cmd"] = img.cmd
	}
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        blob("application/vnd.oci.image.config.v1+json", config),
		"layers":        layers,
	})
	if err != nil {
		return nil, err
	}
	md := blob("application/vnd.oci.image.manifest.v1+json", manifest)
	md["platform"] = map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          img.name,
		"org.opencontainers.image.ref.name": img.name[strings.LastIndex(img.name, ":")+1:],
	}
	return md, nil
}

type archiveFile struct {
	name string
	body []byte
}

// writeTar writes dirs, then files, to a tar at out.
func writeTar(out string, dirs []string, files []archiveFile) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := tar.NewWriter(f)
	for _, d := range dirs {
		if err := w.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: layerTime}); err != nil {
			f.Close()
			return err
		}
	}
	for _, fl := range files {
		if err := w.WriteHeader(&tar.Header{Name: fl.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(fl.body)), ModTime: layerTime}); err != nil {
			f.Close()
			return err
		}
		if _, err := w.Write(fl.body); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func descriptor(mediaType string, b []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
}
