package scsi

import (
	"encoding/binary"
)

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be24(b []byte) uint32 { return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

func put16(b []byte, v uint16) { binary.BigEndian.PutUint16(b, v) }
func put32(b []byte, v uint32) { binary.BigEndian.PutUint32(b, v) }
func put64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }

func cmdTestUnitReady(tk *task) error { return nil }

// cmdRequestSense returns the pending unit attention (and clears it), or
// NO SENSE; autosense carries all other sense data.
func cmdRequestSense(tk *task) error {
	cdb := tk.cdb
	desc := cdb[1]&0x01 != 0
	alloc := int(cdb[4])
	se := newSense(SenseNoSense, ASCNoAdditionalSense)
	if tk.lu == nil {
		se = newSense(SenseIllegalRequest, ASCLUNotSupported)
	} else {
		tk.nx = tk.lu.nexus(tk.cmd.Nexus)
		if asc, ok := tk.nx.takeUA(); ok {
			se = newSense(SenseUnitAttention, asc)
		} else if s := tk.lu.sanitizeRefusal(); s != nil {
			se = s // with the progress of a running SANITIZE
		}
	}
	var data []byte
	if desc {
		data = []byte{0x72, byte(se.Key), byte(se.ASC >> 8), byte(se.ASC), 0, 0, 0, 0}
		if se.ProgressValid {
			// Sense key specific descriptor: progress indication.
			data = append(data, 0x02, 0x06, 0, 0x80, byte(se.Progress>>8), byte(se.Progress), 0, 0)
			data[7] = 8
		}
	} else {
		data = se.Bytes()
	}
	tk.setDataIn(data, alloc)
	return nil
}

// Version descriptors (SPC-4 table 37) claimed by standard INQUIRY.
const (
	versionSAM5  = 0x00a0
	versionSPC4  = 0x0460
	versionSBC3  = 0x04c0
	versionISCSI = 0x0960
)

const standardInquiryLen = 96

func cmdInquiry(tk *task) error {
	cdb := tk.cdb
	evpd := cdb[1]&0x01 != 0
	if cdb[1]&0x02 != 0 { // CMDDT (obsolete)
		return errCDBField(1, 1)
	}
	page := cdb[2]
	alloc := int(be16(cdb[3:5]))
	if !evpd {
		if page != 0 {
			return errCDBField(2, -1)
		}
		tk.setDataIn(tk.standardInquiry(), alloc)
		return nil
	}
	if tk.lu == nil {
		// No logical unit: qualifier 011b, and no VPD pages.
		return errCDBField(2, -1)
	}
	data, err := tk.lu.vpd(tk, page)
	if err != nil {
		return err
	}
	tk.setDataIn(data, alloc)
	return nil
}

func (tk *task) standardInquiry() []byte {
	d := make([]byte, standardInquiryLen)
	lu := tk.lu
	if lu == nil {
		d[0] = 0x7f // peripheral qualifier 011b, device type 1Fh
		d[2] = 0x06
		d[3] = 0x12
		d[4] = standardInquiryLen - 5
		return d
	}
	d[0] = 0x00 // connected direct-access block device
	d[2] = 0x06 // SPC-4
	d[3] = 0x10 | 0x02
	d[4] = standardInquiryLen - 5
	d[5] = 0x08 | lu.tpgs() // SCCS=0, ACC=0, TPGS (01b with ALUA), 3PC=1 (EXTENDED COPY), PROTECT=0
	d[6] = 0x00
	d[7] = 0x02 // CMDQUE
	padCopy(d[8:16], lu.vendor)
	padCopy(d[16:32], lu.product)
	padCopy(d[32:36], lu.revision)
	for i, v := range []uint16{versionSAM5, versionISCSI, versionSPC4, versionSBC3} {
		put16(d[58+2*i:], v)
	}
	return d
}

// padCopy copies s into dst, padding with spaces (SPC ASCII fields).
func padCopy(dst []byte, s string) {
	n := copy(dst, s)
	for i := n; i < len(dst); i++ {
		dst[i] = ' '
	}
}

// supportedVPD lists the VPD pages in ascending order.
const supportedVPD = "\x00\x80\x83\x86\x8f\xb0\xb1\xb2"

func (lu *LU) vpd(tk *task, page byte) ([]byte, error) {
	hdr := func(body []byte) []byte {
		d := make([]byte, 4+len(body))
		d[1] = page
		put16(d[2:4], uint16(len(body)))
		copy(d[4:], body)
		return d
	}
	switch page {
	case 0x00:
		return hdr([]byte(supportedVPD)), nil
	case 0x80:
		return hdr([]byte(lu.serial)), nil
	case 0x83:
		return hdr(lu.deviceIdentification(tk)), nil
	case 0x86:
		b := make([]byte, 0x3c)
		b[1] = 0x01 // SIMPSUP
		b[2] = 0x01 // V_SUP: volatile cache present
		return hdr(b), nil
	case 0x8f:
		return hdr(lu.thirdPartyCopyVPD()), nil
	case 0xb0:
		return hdr(lu.blockLimits()), nil
	case 0xb1:
		b := make([]byte, 0x3c)
		// Medium rotation rate 0: not reported (the cache fronts a
		// device of unknown kind).
		if lu.thin {
			// WABEREQ 01b: after SANITIZE BLOCK ERASE reads complete
			// with GOOD (they return zeroes). WACEREQ stays 00b: no
			// CRYPTOGRAPHIC ERASE.
			b[3] = 0x40
		}
		return hdr(b), nil
	case 0xb2:
		b := make([]byte, 4)
		if lu.thin {
			b[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
			b[2] = 0x02                      // thin provisioned
		}
		return hdr(b), nil
	}
	return nil, errCDBField(2, -1)
}

// deviceIdentification builds the VPD 83h designation descriptors.
func (lu *LU) deviceIdentification(tk *task) []byte {
	var out []byte
	add := func(codeSet, piv, assoc, typ byte, id []byte) {
		hdr := []byte{codeSet, piv<<7 | assoc<<4 | typ, 0, byte(len(id))}
		if piv != 0 {
			hdr[0] |= 0x05 << 4 // protocol identifier: iSCSI
		}
		out = append(out, hdr...)
		out = append(out, id...)
	}
	// NAA IEEE Registered Extended (NAA 6): 124 bits taken from DeviceID.
	id := Identity{Serial: lu.serial, DeviceID: lu.deviceID}
	naa := lu.naa()
	add(1, 0, 0, 3, naa[:])
	// T10 vendor ID based.
	add(2, 0, 0, 1, id.T10VendorID(lu.vendor))
	var n Nexus
	if tk.nx != nil {
		n = tk.nx.nexus
	} else if tk.cmd.Nexus != nil {
		n = *tk.cmd.Nexus
	}
	// Relative target port and target port group (association: port).
	rp := make([]byte, 4)
	put16(rp[2:], n.RelativePortID)
	add(1, 1, 1, 4, rp)
	if id, ok := lu.targetPortGroupOf(n.RelativePortID); ok {
		tpg := make([]byte, 4)
		put16(tpg[2:], id)
		add(1, 1, 1, 5, tpg)
	}
	if n.TargetPort != "" {
		add(3, 1, 1, 8, scsiName(n.TargetPort))
	}
	if lu.t.name != "" {
		add(3, 1, 2, 8, scsiName(lu.t.name))
	}
	return out
}

// targetPortGroup is the one target port group every port belongs to
// without ALUA.
const targetPortGroup = 1

// scsiName pads a SCSI name string with NULs to a multiple of 4 (at least
// one NUL), as SPC-4 7.8.6.11 requires.
func scsiName(s string) []byte {
	n := (len(s) + 4) &^ 3
	b := make([]byte, n)
	copy(b, s)
	return b
}

func (lu *LU) blockLimits() []byte {
	b := make([]byte, 0x3c)
	b[0] = 0x01 // WSNZ: WRITE SAME with 0 blocks is not supported
	b[1] = byte(lu.maxCAWBlocks)
	put16(b[2:4], 1) // optimal transfer length granularity
	put32(b[4:8], lu.maxXferBlocks)
	put32(b[8:12], lu.optimalXferBlocks)
	put32(b[12:16], lu.maxXferBlocks) // maximum prefetch length
	if lu.thin {
		put32(b[16:20], lu.maxUnmapBlocks)
		put32(b[20:24], lu.maxUnmapDescs)
		put32(b[24:28], 1) // optimal unmap granularity
		put32(b[28:32], 0x80000000)
	}
	put64(b[32:40], lu.maxWriteSameBlks)
	if a := lu.atomic; a != nil {
		put32(b[40:44], a.maxBlks) // MAXIMUM ATOMIC TRANSFER LENGTH
		put32(b[44:48], a.align)
		put32(b[48:52], a.gran)
		// No atomic boundaries: the two boundary fields stay 0.
	}
	return b
}

func cmdReportLUNs(tk *task) error {
	cdb := tk.cdb
	sel := cdb[2]
	alloc := be32(cdb[6:10])
	if alloc < 16 {
		return errCDBField(6, -1)
	}
	var luns []uint64
	switch sel {
	case 0x00, 0x02:
		luns = tk.t.LUNs()
	case 0x01:
	default:
		return errCDBField(2, -1)
	}
	d := make([]byte, 8+8*len(luns))
	put32(d[0:4], uint32(8*len(luns)))
	for i, l := range luns {
		e := d[8+8*i:]
		if l < 256 {
			e[1] = byte(l)
		} else {
			e[0] = 0x40 | byte(l>>8)
			e[1] = byte(l)
		}
	}
	if tk.lu != nil {
		tk.lu.nexus(tk.cmd.Nexus).clearUA(ASCReportedLUNsDataChanged)
	}
	tk.setDataIn(d, int(min(alloc, 1<<20)))
	return nil
}

func cmdReadCapacity10(tk *task) error {
	lu := tk.lu
	d := make([]byte, 8)
	last := lu.blocks() - 1
	if last > 0xffffffff {
		last = 0xffffffff
	}
	put32(d[0:4], uint32(last))
	put32(d[4:8], lu.blockSize)
	tk.setDataIn(d, 8)
	return nil
}

func cmdReadCapacity16(tk *task) error {
	lu := tk.lu
	alloc := be32(tk.cdb[10:14])
	d := make([]byte, 32)
	put64(d[0:8], lu.blocks()-1)
	put32(d[8:12], lu.blockSize)
	// byte 13: physical blocks per logical block exponent 0.
	if lu.thin {
		d[14] = 0x80 | 0x40 // LBPME, LBPRZ
	}
	tk.setDataIn(d, int(min(alloc, 32)))
	return nil
}

func cmdStartStopUnit(tk *task) error {
	cdb := tk.cdb
	pc := cdb[4] >> 4
	loej := cdb[4]&0x02 != 0
	start := cdb[4]&0x01 != 0
	if pc != 0 {
		// Power conditions are not supported; the unit is always active.
		return errCDBField(4, 7)
	}
	if loej && !start {
		// Eject: refused while medium removal is prevented.
		lu := tk.lu
		lu.resMu.Lock()
		prevented := len(lu.prevent) > 0
		lu.resMu.Unlock()
		if prevented {
			return newSense(SenseIllegalRequest, ASCMediumRemovalPrevented)
		}
	}
	if !start && cdb[4]&0x04 == 0 {
		// Stopping flushes the volatile cache (NO_FLUSH=0).
		if err := tk.lu.vol.Flush(tk.volCtx()); err != nil {
			return volumeError(err, ioWrite)
		}
	}
	return nil
}

func cmdPreventAllow(tk *task) error {
	prevent := tk.cdb[4] & 0x03
	lu := tk.lu
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	switch prevent {
	case 0:
		delete(lu.prevent, tk.nx.key)
	case 1:
		lu.prevent[tk.nx.key] = true
	default:
		// Medium changer bits (10b, 11b) are for RMB=1 devices only.
		return errCDBField(4, 1)
	}
	return nil
}
