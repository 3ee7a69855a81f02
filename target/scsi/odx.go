package scsi

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
)

// Token-based copy (ODX): POPULATE TOKEN, WRITE USING TOKEN and RECEIVE ROD
// TOKEN INFORMATION (SBC-3 5.11, 5.32, 5.26; SPC-4 6.19), with the Block
// Device ROD Token Limits descriptor in VPD 8Fh.
//
// A ROD token is a point-in-time representation of block ranges of one
// logical unit. The copy manager does not copy the data when the token is
// made: it remembers the ranges, and any write to one of them through a
// logical unit that shares the CopyManager revokes the token before the
// write reaches the volume (WRITE USING TOKEN rechecks the token after each
// chunk it reads, so it never writes data newer than the token). A token
// that is not used for its inactivity timeout expires. Tokens are
// authenticated with an HMAC under a key drawn when the CopyManager is made,
// so a forged or altered token, or one from an earlier run of the daemon,
// is refused as corrupt.

// ROD token types (SPC-4 table 121, SBC-3 table 89).
const (
	rodTypePointInTime = 0x00800000 // point in time copy - default
	rodTypeBlockZero   = 0xffff0001 // block device zero ROD token
)

// Limits reported in the Block Device ROD Token Limits descriptor and
// enforced.
const (
	odxMaxRanges         = 64
	odxMaxInactivity     = 3600 // seconds
	odxDefaultInactivity = 60   // seconds
	// odxMaxTransferBytes bounds one token and one WRITE USING TOKEN,
	// which moves its data synchronously through the volume: it must end
	// well inside an initiator's command timeout.
	odxMaxTransferBytes = 256 << 20
	odxOptimalBytes     = 64 << 20
	// odxMaxTokens bounds the tokens a CopyManager remembers; making one
	// more forgets the oldest (it is then unknown).
	odxMaxTokens  = 1024
	rodTokenLen   = 512
	rodTokenBody  = 0x01f8 // ROD TOKEN LENGTH: bytes after byte 7
	rodTokenMACAt = 128    // vendor-specific part: the HMAC of bytes 0..127
)

// Additional sense codes of token operations (SPC-4 table 50: 23h/xxh).
const (
	ASCTokenUnsupportedType ASC = 0x2301
	ASCTokenUnknown         ASC = 0x2304
	ASCTokenCorrupt         ASC = 0x2305
	ASCTokenRevoked         ASC = 0x2306
	ASCTokenExpired         ASC = 0x2307
	ASCTokenInvalidLength   ASC = 0x230a
)

// odxRange is one block device range in bytes.
type odxRange struct{ off, n int64 }

func overlaps(a, b odxRange) bool { return a.off < b.off+b.n && b.off < a.off+a.n }

type tokenState uint8

const (
	tokenValid tokenState = iota
	tokenRevoked
	tokenExpired
)

// rodToken is what the copy manager remembers of a token it made.
type rodToken struct {
	id       uint64
	src      *LU
	ranges   []odxRange
	bytes    int64
	timeout  time.Duration
	lastUse  time.Time
	state    tokenState
	serial   uint64 // creation order, for eviction
	revokeAt string // what revoked it, for the log
}

// odxState is the token table of a CopyManager.
type odxState struct {
	key    [32]byte
	nextID uint64
	tokens map[uint64]*rodToken
	// live counts tokens in tokenValid state (possibly expired without
	// anyone having looked yet): while it is zero, writes skip the
	// revocation scan.
	live int64
}

func (cm *CopyManager) initODX() {
	if _, err := rand.Read(cm.odx.key[:]); err != nil {
		// crypto/rand does not fail on Linux; without a key tokens
		// could be forged, so refuse to run rather than go on.
		panic("scsi: no randomness for the ROD token key: " + err.Error())
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	cm.odx.nextID = be64(b[:]) | 1
	cm.odx.tokens = map[uint64]*rodToken{}
	cm.now = time.Now
}

// liveTokens reports whether any token may still be valid (one atomic-free
// read under the mutex would cost every write a lock; the counter is read
// racily on purpose and rechecked under the lock).
func (cm *CopyManager) liveTokens() bool {
	return cm.liveHint.Load() > 0
}

// revoke marks every valid token that represents data of vol in r revoked.
// It runs before the write it is called for reaches the volume.
func (cm *CopyManager) revoke(v Volume, r odxRange, why string) {
	if !cm.liveTokens() {
		return
	}
	cm.mu.Lock()
	defer cm.mu.Unlock()
	now := cm.now()
	for _, t := range cm.odx.tokens {
		if t.state != tokenValid || t.src.vol != v {
			continue
		}
		if now.Sub(t.lastUse) > t.timeout {
			cm.setState(t, tokenExpired)
			continue
		}
		for _, tr := range t.ranges {
			if overlaps(tr, r) {
				cm.setState(t, tokenRevoked)
				t.revokeAt = why
				break
			}
		}
	}
}

// revokeLU revokes every token of lu (the unit is being removed).
func (cm *CopyManager) revokeLU(lu *LU) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	for id, t := range cm.odx.tokens {
		if t.src == lu {
			cm.setState(t, tokenRevoked)
			delete(cm.odx.tokens, id)
		}
	}
}

// setState moves t out of tokenValid. cm.mu is held.
func (cm *CopyManager) setState(t *rodToken, s tokenState) {
	if t.state == tokenValid && s != tokenValid {
		cm.odx.live--
		cm.liveHint.Store(cm.odx.live)
	}
	t.state = s
}

// create registers a token for ranges of src and returns its bytes.
func (cm *CopyManager) create(src *LU, ranges []odxRange, total int64, timeout time.Duration) []byte {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if len(cm.odx.tokens) >= odxMaxTokens {
		var oldest *rodToken
		for _, t := range cm.odx.tokens {
			if oldest == nil || t.serial < oldest.serial {
				oldest = t
			}
		}
		cm.setState(oldest, tokenExpired)
		delete(cm.odx.tokens, oldest.id)
	}
	id := cm.odx.nextID
	cm.odx.nextID++
	t := &rodToken{id: id, src: src, ranges: ranges, bytes: total, timeout: timeout,
		lastUse: cm.now(), serial: id}
	cm.odx.tokens[id] = t
	cm.odx.live++
	cm.liveHint.Store(cm.odx.live)

	tok := make([]byte, rodTokenLen)
	put32(tok[0:4], rodTypePointInTime)
	put16(tok[6:8], rodTokenBody)
	put64(tok[8:16], id)
	copy(tok[16:48], cscdDescriptor(src))
	put64(tok[56:64], uint64(total)) // NUMBER OF BYTES REPRESENTED (128 bits)
	mac := hmac.New(sha256.New, cm.odx.key[:])
	mac.Write(tok[:rodTokenMACAt])
	copy(tok[rodTokenMACAt:], mac.Sum(nil))
	return tok
}

// cscdDescriptor is the identification descriptor CSCD (E4h) of lu: the
// CREATOR LOGICAL UNIT DESCRIPTOR of its tokens.
func cscdDescriptor(lu *LU) []byte {
	d := make([]byte, xcopyCSCDLen)
	d[0] = xcopyTypeIdentCSCD
	d[4] = 0x01 // binary
	d[5] = 0x03 // associated with the logical unit, NAA
	d[7] = 16
	naa := lu.naa()
	copy(d[8:24], naa[:])
	d[29], d[30], d[31] = byte(lu.blockSize>>16), byte(lu.blockSize>>8), byte(lu.blockSize)
	return d
}

// resolve checks a token presented by WRITE USING TOKEN and returns what
// it represents; a block device zero token returns nil (zeroes).
func (cm *CopyManager) resolve(tok []byte) (*rodToken, error) {
	typ := be32(tok[0:4])
	if typ == rodTypeBlockZero {
		return nil, nil
	}
	if typ != rodTypePointInTime {
		return nil, tokenError(ASCTokenUnsupportedType, 0)
	}
	if be16(tok[6:8]) != rodTokenBody {
		return nil, tokenError(ASCTokenInvalidLength, 6)
	}
	mac := hmac.New(sha256.New, cm.odx.key[:])
	mac.Write(tok[:rodTokenMACAt])
	if !hmac.Equal(mac.Sum(nil), tok[rodTokenMACAt:rodTokenMACAt+sha256.Size]) {
		return nil, tokenError(ASCTokenCorrupt, 0)
	}
	cm.mu.Lock()
	defer cm.mu.Unlock()
	t := cm.odx.tokens[be64(tok[8:16])]
	if t == nil {
		return nil, tokenError(ASCTokenUnknown, 8)
	}
	now := cm.now()
	if t.state == tokenValid && now.Sub(t.lastUse) > t.timeout {
		cm.setState(t, tokenExpired)
	}
	switch t.state {
	case tokenRevoked:
		return nil, tokenError(ASCTokenRevoked, 0)
	case tokenExpired:
		return nil, tokenError(ASCTokenExpired, 0)
	}
	t.lastUse = now
	return t, nil
}

// stillValid reports whether t has not been revoked since resolve.
func (cm *CopyManager) stillValid(t *rodToken) error {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if t.state == tokenRevoked {
		return tokenError(ASCTokenRevoked, 0)
	}
	return nil
}

func (cm *CopyManager) deleteToken(t *rodToken) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	cm.setState(t, tokenRevoked)
	delete(cm.odx.tokens, t.id)
}

// tokenError is ILLEGAL REQUEST / INVALID TOKEN OPERATION with its
// qualifier, pointing into the ROD TOKEN field of the WRITE USING TOKEN
// parameter list (which starts at byte 16).
func tokenError(asc ASC, field int) *SenseError {
	return &SenseError{Key: SenseIllegalRequest, ASC: asc, FieldValid: true, Field: uint16(16 + field)}
}

// lid4Result is what RECEIVE ROD TOKEN INFORMATION reports for a list
// identifier.
type lid4Result struct {
	listID  uint32
	sa      byte // POPULATE TOKEN (10h) or WRITE USING TOKEN (11h)
	done    bool
	status  byte   // COPY OPERATION STATUS
	scsi    Status // completion status of the command
	sense   []byte
	blocks  uint64 // transfer count in logical blocks
	segs    uint16
	token   []byte
	counter uint16
}

// lid4State holds a nexus' token operation results, bounded like LID1's.
type lid4State struct {
	mu      sync.Mutex
	results []*lid4Result
}

func (s *lid4State) start(id uint32, sa byte) (*lid4Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.results[:0]
	for _, r := range s.results {
		if r.listID == id {
			if !r.done {
				return nil, newSense(SenseIllegalRequest, ASCOperationInProgress)
			}
			continue
		}
		out = append(out, r)
	}
	s.results = out
	if len(s.results) >= xcopyHeldResults {
		s.results = s.results[1:]
	}
	r := &lid4Result{listID: id, sa: sa, status: 0x10}
	s.results = append(s.results, r)
	return r, nil
}

func (s *lid4State) finish(r *lid4Result, err error, blocks uint64, segs uint16, token []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.done, r.blocks, r.segs, r.token = true, blocks, segs, token
	r.status, r.scsi = 0x01, StatusGood
	var se *SenseError
	switch {
	case err == nil:
	case errors.As(err, &se):
		r.status, r.scsi, r.sense = 0x02, StatusCheckCondition, se.Bytes()
	default:
		r.status, r.scsi, r.sense = 0x02, StatusCheckCondition, newSense(SenseHardwareError, ASCInternalTargetFailure).Bytes()
	}
}

// parseRanges decodes block device range descriptors (16 bytes each) and
// checks them against lu: within capacity, no two overlapping, at most
// odxMaxRanges, at most odxMaxTransferBytes in all. base is the offset of
// the list in the parameter list, for field pointers.
func parseRanges(lu *LU, b []byte, base int) ([]odxRange, int64, error) {
	if len(b)%16 != 0 {
		return nil, 0, errParamField(base-2, -1)
	}
	if len(b) == 0 {
		return nil, 0, errParamField(base-2, -1)
	}
	if len(b)/16 > odxMaxRanges {
		return nil, 0, newSense(SenseIllegalRequest, ASCTooManySegmentDescriptors)
	}
	bs := int64(lu.blockSize)
	var out []odxRange
	var total int64
	for i := 0; i < len(b); i += 16 {
		lba, n := be64(b[i:i+8]), uint64(be32(b[i+8:i+12]))
		if err := lu.checkRange(lba, n); err != nil {
			return nil, 0, err
		}
		if n == 0 {
			continue // a descriptor of no blocks is ignored
		}
		r := odxRange{off: int64(lba) * bs, n: int64(n) * bs}
		for _, o := range out {
			if overlaps(o, r) {
				return nil, 0, errParamField(base+i, -1)
			}
		}
		total += r.n
		if total > odxMaxTransferBytes {
			return nil, 0, errParamField(base+i+8, -1)
		}
		out = append(out, r)
	}
	return out, total, nil
}

// tokenCmdParams checks the CDB of POPULATE TOKEN / WRITE USING TOKEN and
// returns the list identifier and the parameter list (nil: length zero).
func (tk *task) tokenCmdParams(minLen int) (uint32, []byte, error) {
	id := be32(tk.cdb[6:10])
	plen := int(be32(tk.cdb[10:14]))
	tk.xfer = uint32(plen)
	if plen == 0 {
		return id, nil, nil
	}
	// Beyond the header, room for many more range descriptors than
	// allowed, so that too many get TOO MANY SEGMENT DESCRIPTORS.
	if plen < minLen || plen > minLen+64*odxMaxRanges*16 {
		return 0, nil, errParamListLength()
	}
	p, err := tk.dataOut(uint64(plen))
	if err != nil {
		return 0, nil, err
	}
	if int(be16(p[0:2]))+2 > plen {
		return 0, nil, errParamListLength()
	}
	return id, p, nil
}

// cmdPopulateToken serves POPULATE TOKEN: it validates the ranges and
// makes a token for them; the data is not read.
func cmdPopulateToken(tk *task) error {
	lu := tk.lu
	id, p, err := tk.tokenCmdParams(16)
	if err != nil || p == nil {
		return err
	}
	if p[2]&0x02 != 0 { // RTV
		if t := be32(p[8:12]); t != rodTypePointInTime && t != 0 {
			return errParamField(8, -1)
		}
	}
	timeout := be32(p[4:8])
	if timeout > odxMaxInactivity {
		return errParamField(4, -1)
	}
	if timeout == 0 {
		timeout = odxDefaultInactivity
	}
	rl := int(be16(p[14:16]))
	if 16+rl > len(p) {
		return errParamListLength()
	}
	ranges, total, err := parseRanges(lu, p[16:16+rl], 16)
	if err != nil {
		return err
	}
	res, err := tk.nx.lid4.start(id, 0x10)
	if err != nil {
		return err
	}
	tok := lu.t.copyMgr.create(lu, ranges, total, time.Duration(timeout)*time.Second)
	tk.nx.lid4.finish(res, nil, uint64(total>>lu.blockShift), uint16(len(ranges)), tok)
	return nil
}

// cmdWriteUsingToken serves WRITE USING TOKEN: the data the token
// represents, from OFFSET INTO ROD on, is written to the destination
// ranges in order. If the token represents less, the rest of the ranges is
// left alone and RECEIVE ROD TOKEN INFORMATION reports the residual; an
// error mid-way leaves the blocks before it written, and the transfer count
// says how many.
func cmdWriteUsingToken(tk *task) error {
	lu := tk.lu
	cm := lu.t.copyMgr
	const hdr = 536
	id, p, err := tk.tokenCmdParams(hdr)
	if err != nil || p == nil {
		return err
	}
	rl := int(be16(p[534:536]))
	if hdr+rl > len(p) {
		return errParamListLength()
	}
	ranges, _, err := parseRanges(lu, p[hdr:hdr+rl], hdr)
	if err != nil {
		return err
	}
	t, err := cm.resolve(p[16 : 16+rodTokenLen])
	if err != nil {
		return err
	}
	var src *LU
	var srcRanges []odxRange
	var avail int64 = 1 << 62 // a zero token represents any amount
	if t != nil {
		src, srcRanges, avail = t.src, t.ranges, t.bytes
		if src.blockSize != lu.blockSize {
			return tokenError(ASCTokenUnsupportedType, 0)
		}
	}
	skip := int64(be64(p[8:16])) * int64(lu.blockSize)
	if skip < 0 || skip >= avail {
		return errParamField(8, -1)
	}
	res, err := tk.nx.lid4.start(id, 0x11)
	if err != nil {
		return err
	}
	written, segs, err := tk.writeFromToken(cm, t, src, srcRanges, skip, avail-skip, ranges)
	tk.nx.lid4.finish(res, err, uint64(written>>lu.blockShift), segs, nil)
	if err == nil {
		var want int64
		for _, r := range ranges {
			want += r.n
		}
		if written < want {
			tk.nx.lid4.mu.Lock()
			res.status = 0x03 // completed, with residual data
			tk.nx.lid4.mu.Unlock()
		}
		if t != nil && p[2]&0x02 != 0 { // DEL_TKN
			cm.deleteToken(t)
		}
	}
	return err
}

// writeFromToken moves up to avail bytes, taken from srcRanges after skip
// bytes (zeroes when t is nil), into the destination ranges.
func (tk *task) writeFromToken(cm *CopyManager, t *rodToken, src *LU, srcRanges []odxRange, skip, avail int64, dst []odxRange) (int64, uint16, error) {
	lu := tk.lu
	ctx := tk.volCtx()
	fua := !lu.wce.Load()
	buf := make([]byte, xcopyChunk)
	zero := t == nil
	if zero {
		clear(buf)
	}
	// Source cursor: range index and offset within it, after skip.
	si, so := 0, skip
	for si < len(srcRanges) && so >= srcRanges[si].n {
		so -= srcRanges[si].n
		si++
	}
	// A destination volume that copies by itself (blk.Copier: the cache
	// engine shares cached data) gets the chunks that come from a
	// source; one that declines (blk.ErrUnsupported) is written.
	copier, offload := blk.CopierOf(lu.vol)
	var written int64
	var segs uint16
	for _, d := range dst {
		for done := int64(0); done < d.n; {
			if avail == 0 {
				return written, segs, nil
			}
			c := min(int64(len(buf)), d.n-done, avail)
			r := odxRange{off: d.off + done, n: c}
			copied := false
			if !zero {
				c = min(c, srcRanges[si].n-so)
				r.n = c
				if offload {
					var err error
					if copied, err = tk.copyFromToken(cm, t, copier, src, srcRanges[si].off+so, r, fua); err != nil {
						return written, segs, err
					}
					offload = copied
				}
				if !copied {
					if err := src.vol.ReadAt(ctx, buf[:c], srcRanges[si].off+so); err != nil {
						return written, segs, volumeError(err, ioRead)
					}
					// A write to the source since resolve revoked the
					// token: what was read may be newer than the token.
					if err := cm.stillValid(t); err != nil {
						return written, segs, err
					}
				}
			}
			if !copied {
				cm.revoke(lu.vol, r, "WRITE USING TOKEN")
				if err := lu.vol.WriteAt(ctx, buf[:c], r.off, fua); err != nil {
					return written, segs, volumeError(err, ioWrite)
				}
			}
			written += c
			done += c
			avail -= c
			if !zero {
				so += c
				if so == srcRanges[si].n {
					si, so = si+1, 0
				}
			}
		}
		segs++
	}
	return written, segs, nil
}

// copyFromToken copies r.n bytes of token t's data, at srcOff of src,
// into r of the task's logical unit through its Copier. copied=false with
// no error: the copier declined (blk.ErrUnsupported) and nothing was
// written. The token must be valid before the copy; a write to the source
// during the copy revokes it and fails the command after the chunk was
// written (the transfer count does not include it), unless the chunk
// overlaps the token's own source ranges, whose revocation by this very
// write cannot be told from another's (the next chunk then fails, as
// with a read and a write).
func (tk *task) copyFromToken(cm *CopyManager, t *rodToken, copier blk.Copier, src *LU, srcOff int64, r odxRange, fua bool) (bool, error) {
	if err := cm.stillValid(t); err != nil {
		return false, err
	}
	self := false
	if src.vol == tk.lu.vol {
		for _, tr := range t.ranges {
			self = self || overlaps(tr, r)
		}
	}
	cm.revoke(tk.lu.vol, r, "WRITE USING TOKEN")
	err := copier.CopyFrom(tk.volCtx(), src.vol, srcOff, r.off, r.n, fua)
	if errors.Is(err, blk.ErrUnsupported) {
		return false, nil
	}
	if err != nil {
		return false, volumeError(err, ioWrite)
	}
	if !self {
		if err := cm.stillValid(t); err != nil {
			return false, err
		}
	}
	return true, nil
}

// cmdReceiveRODTokenInfo serves RECEIVE ROD TOKEN INFORMATION (SPC-4
// 6.19.4): the status of the POPULATE TOKEN or WRITE USING TOKEN with the
// list identifier, and the token a POPULATE TOKEN made.
func cmdReceiveRODTokenInfo(tk *task) error {
	id := be32(tk.cdb[2:6])
	alloc := int(be32(tk.cdb[10:14]))
	s := &tk.nx.lid4
	s.mu.Lock()
	var r *lid4Result
	for _, x := range s.results {
		if x.listID == id {
			r = x
		}
	}
	if r == nil {
		s.mu.Unlock()
		return errCDBField(2, -1)
	}
	d := make([]byte, 32, 32+len(r.sense)+4+2+rodTokenLen)
	d[4] = r.sa
	d[5] = r.status
	put16(d[6:8], r.counter)
	d[12] = byte(r.scsi)
	d[13] = byte(len(r.sense))
	d[14] = byte(len(r.sense))
	d[15] = 0xf1 // transfer count in logical blocks
	put64(d[16:24], r.blocks)
	put16(d[24:26], r.segs)
	d = append(d, r.sense...)
	tl := make([]byte, 4)
	if r.token != nil {
		put32(tl, 2+rodTokenLen)
		tl = append(tl, 0, 0)
		tl = append(tl, r.token...)
	}
	d = append(d, tl...)
	s.mu.Unlock()
	put32(d[0:4], uint32(len(d)-4))
	tk.setDataIn(d, alloc)
	return nil
}

// rodLimitsDescriptor is the Block Device ROD Token Limits descriptor
// (type 0000h) of VPD 8Fh, the layout SBC-3 gives and Windows reads.
func (lu *LU) rodLimitsDescriptor() []byte {
	b := make([]byte, 0x24) // after the 4-byte descriptor header
	put16(b[10:12], odxMaxRanges)
	put32(b[12:16], odxMaxInactivity)
	put32(b[16:20], odxDefaultInactivity)
	put64(b[20:28], uint64(odxMaxTransferBytes>>lu.blockShift)) // MAXIMUM TOKEN TRANSFER SIZE
	put64(b[28:36], uint64(odxOptimalBytes>>lu.blockShift))     // OPTIMAL TRANSFER COUNT
	return b
}

// revokeForWrite revokes the tokens a command about to modify the
// logical unit's data would make stale. Commands that write through a
// token or a copy revoke range by range as they go (copyRange,
// writeFromToken).
func (tk *task) revokeForWrite() {
	lu := tk.lu
	cm := lu.t.copyMgr
	if !cm.liveTokens() {
		return
	}
	bs := int64(lu.blockSize)
	switch op := tk.cdb[0]; op {
	case 0x0a, 0x2a, 0x2e, 0xaa, 0xae, 0x8a, 0x8e, 0x89, 0x8b, 0x41, 0x93:
		r := decodeRW(tk.cdb)
		n := int64(r.blocks)
		if op == 0x41 || op == 0x93 {
			if n == 0 { // WRITE SAME to the end of the medium
				n = int64(lu.blocks()) - int64(min(r.lba, lu.blocks()))
			}
		}
		cm.revoke(lu.vol, odxRange{off: int64(min(r.lba, lu.blocks())) * bs, n: n * bs}, "write")
	case 0x9c: // WRITE ATOMIC(16)
		cm.revoke(lu.vol, odxRange{off: int64(min(be64(tk.cdb[2:10]), lu.blocks())) * bs, n: int64(be16(tk.cdb[12:14])) * bs}, "write atomic")
	case 0x42, 0x48: // UNMAP, SANITIZE: the whole unit, conservatively
		cm.revoke(lu.vol, odxRange{off: 0, n: lu.vol.Size()}, "unmap/sanitize")
	}
}
