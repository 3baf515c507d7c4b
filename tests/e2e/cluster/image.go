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
	"strings"
	"time"
)

// BusyboxImage is the only image the real node has. No registry is
// reachable: the suite builds it from Debian's busybox-static and imports
// it; it is the pause image too, so its default command sleeps.
const BusyboxImage = "docker.io/library/busybox:1.36"

// buildBusyboxOCI writes an OCI image archive holding /bin/busybox and a
// link per applet, tagged BusyboxImage.
func buildBusyboxOCI(busybox, out string) error {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %w", busybox, err)
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	mtime := time.Unix(0, 0)
	add := func(h *tar.Header, body []byte) error {
		h.ModTime = mtime
		if err := lw.WriteHeader(h); err != nil {
			return err
		}
		_, err := lw.Write(body)
		return err
	}
	for _, d := range []string{"bin/", "tmp/", "etc/", "proc/", "sys/", "dev/", "data/"} {
		if err := add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil); err != nil {
			return err
		}
	}
	if err := add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))}, bin); err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := add(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return err
		}
	}
	if err := lw.Close(); err != nil {
		return err
	}
	layerDigest := digest(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Env": []string{"PATH=/bin"},
			// As the pause image: PID 1 sleeps until the sandbox is killed.
			"Cmd": []string{"/bin/sleep", "2147483647"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer.Bytes())},
	})
	md := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          BusyboxImage,
		"org.opencontainers.image.ref.name": "1.36",
	}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{md}})

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := tar.NewWriter(f)
	files := []struct {
		name string
		body []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(config), config},
		{blobPath(manifest), manifest},
		{blobPath(layer.Bytes()), layer.Bytes()},
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := w.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}); err != nil {
			f.Close()
			return err
		}
	}
	for _, fl := range files {
		if err := w.WriteHeader(&tar.Header{Name: fl.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(fl.body)), ModTime: mtime}); err != nil {
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

func blobPath(b []byte) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:")
}

func descriptor(mediaType string, b []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
}
