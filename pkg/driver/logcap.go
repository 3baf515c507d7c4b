package driver

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Bounds on what one call can add to the log, whatever its request holds. A
// request of the largest size gRPC accepts (4 MiB) logs a few KiB at most.
const (
	// logMaxString is the bytes kept of each string or bytes value and map
	// key.
	logMaxString = 256
	// logMaxEntries is the entries kept of each map and list.
	logMaxEntries = 16
	// logMaxMessage is the bytes kept of a whole rendered message.
	logMaxMessage = 2048
	// logMaxError is the bytes kept of an error message: handlers' errors
	// may quote what the request carried.
	logMaxError = 1024
	// logMaxStack is the bytes kept of a panicking handler's stack.
	logMaxStack = 8192
	// logMaxCuts is the cut lists and maps named after a message that
	// cannot say themselves that they were cut.
	logMaxCuts = 4
)

// forLog renders msg for a log line when the line is written: a capped copy
// of msg rendered by protosanitizer.StripSecrets, so every field the CSI
// spec marks csi_secret reads ***stripped*** (the whole field, map keys
// included). In the copy each string, bytes value and map key is cut to
// logMaxString bytes with a "...(N bytes)" marker, and each map and list to
// logMaxEntries entries (the lowest keys of a map); a cut list of strings
// ends in "...(N entries)", a cut map of strings to strings holds
// "...": "(N entries)", and other cut lists and maps are named with their
// lengths after the JSON, as " ...(cut path: N entries)". The whole is cut
// to logMaxMessage bytes. msg itself is never changed, and no uncapped
// field is copied or serialised. A value that is not a protobuf message is
// printed with %v and cut the same way.
func forLog(msg any) fmt.Stringer { return loggedMessage{msg} }

type loggedMessage struct{ msg any }

func (l loggedMessage) String() string {
	m, ok := l.msg.(proto.Message)
	if !ok {
		return capString(fmt.Sprint(l.msg), logMaxMessage)
	}
	var c capper
	out := protosanitizer.StripSecrets(c.message(m.ProtoReflect(), "").Interface()).String()
	if len(c.cuts) == 0 {
		return capString(out, logMaxMessage)
	}
	if c.more > 0 {
		c.cuts = append(c.cuts, fmt.Sprintf("%d more", c.more))
	}
	note := capString(" ...(cut "+strings.Join(c.cuts, ", ")+")", logMaxString)
	return capString(out, logMaxMessage-len(note)) + note
}

// capper builds the capped copy of a message, and notes the lists and maps
// it cut whose type leaves no room for a marker.
type capper struct {
	cuts []string
	more int
}

// message is a new message of src's type holding src's set fields, each
// bounded; path names src within the logged message.
func (c *capper) message(src protoreflect.Message, path string) protoreflect.Message {
	dst := src.New()
	src.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := f.TextName()
		if path != "" {
			p = path + "." + p
		}
		switch {
		case f.IsList():
			c.list(dst.Mutable(f).List(), f, v.List(), p)
		case f.IsMap():
			c.mapOf(dst.Mutable(f).Map(), f, v.Map(), p)
		default:
			dst.Set(f, c.value(f, v, p))
		}
		return true
	})
	return dst
}

// list appends to dst the first logMaxEntries entries of src, bounded.
func (c *capper) list(dst protoreflect.List, f protoreflect.FieldDescriptor, src protoreflect.List, path string) {
	n := min(src.Len(), logMaxEntries)
	marked := f.Kind() == protoreflect.StringKind
	if n < src.Len() && !marked {
		c.cut(path, src.Len())
	}
	for i := range n {
		dst.Append(c.value(f, src.Get(i), path))
	}
	if n < src.Len() && marked {
		dst.Append(protoreflect.ValueOfString(fmt.Sprintf("...(%d entries)", src.Len())))
	}
}

// mapOf puts into dst the entries of the logMaxEntries lowest keys of src,
// so that the same map always logs the same way, keys and values bounded.
// It picks them in one pass without sorting or copying all keys.
func (c *capper) mapOf(dst protoreflect.Map, f protoreflect.FieldDescriptor, src protoreflect.Map, path string) {
	type entry struct {
		s string
		k protoreflect.MapKey
	}
	low := make([]entry, 0, logMaxEntries+1)
	src.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
		e := entry{k.String(), k}
		if len(low) == logMaxEntries && e.s >= low[len(low)-1].s {
			return true
		}
		i, _ := slices.BinarySearchFunc(low, e.s, func(e entry, s string) int { return strings.Compare(e.s, s) })
		low = slices.Insert(low, i, e)
		if len(low) > logMaxEntries {
			low = low[:logMaxEntries]
		}
		return true
	})
	stringKeys := f.MapKey().Kind() == protoreflect.StringKind
	marked := stringKeys && f.MapValue().Kind() == protoreflect.StringKind
	if src.Len() > logMaxEntries && !marked {
		c.cut(path, src.Len())
	}
	for _, e := range low {
		k := e.k
		if stringKeys {
			k = protoreflect.ValueOfString(capString(e.s, logMaxString)).MapKey()
		}
		dst.Set(k, c.value(f.MapValue(), src.Get(e.k), path))
	}
	if src.Len() > logMaxEntries && marked {
		dst.Set(protoreflect.ValueOfString("...").MapKey(), protoreflect.ValueOfString(fmt.Sprintf("(%d entries)", src.Len())))
	}
}

// value is one value of a field (or of a list or map field), bounded.
func (c *capper) value(f protoreflect.FieldDescriptor, v protoreflect.Value, path string) protoreflect.Value {
	switch f.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return protoreflect.ValueOfMessage(c.message(v.Message(), path))
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(capString(v.String(), logMaxString))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes(capBytes(v.Bytes(), logMaxString))
	}
	return v
}

// cut notes that the list or map at path held n entries, once however
// many copies of the path were cut to the same length, outer paths first.
func (c *capper) cut(path string, n int) {
	note := fmt.Sprintf("%s: %d entries", path, n)
	switch {
	case slices.Contains(c.cuts, note):
	case len(c.cuts) == logMaxCuts:
		c.more++
	default:
		c.cuts = append(c.cuts, note)
	}
}

// capString cuts s to at most n bytes, at a UTF-8 boundary, and marks the
// cut with the original length.
func capString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:cut], len(s))
}

// capBytes is b cut to at most n bytes followed by the "...(N bytes)"
// marker, or b itself when it is short enough.
func capBytes(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return fmt.Appendf(b[:n:n], "...(%d bytes)", len(b))
}

// errForLog is err for a log line, its message cut to logMaxError bytes.
func errForLog(err error) error {
	if err == nil {
		return nil
	}
	return loggedError{err}
}

type loggedError struct{ err error }

func (e loggedError) Error() string { return capString(e.err.Error(), logMaxError) }
func (e loggedError) Unwrap() error { return e.err }
