package scsi

// supported reports whether the logical unit serves the command (UNMAP
// only on thin logical units, WRITE ATOMIC only on volumes with atomic
// writes, SANITIZE BLOCK ERASE only on thin logical units, REPORT TARGET
// PORT GROUPS only with ALUA).
func (lu *LU) supports(e *opEntry) bool {
	switch {
	case lu == nil:
		return true
	case e.opcode == 0x42:
		return lu.thin
	case e.opcode == 0x9c:
		return lu.atomic != nil
	case e.opcode == 0x48 && e.sa == sanitizeBlockErase:
		return lu.thin
	case lu.hides(e):
		return false
	}
	return true
}

// cmdReportSupportedOpcodes serves REPORT SUPPORTED OPERATION CODES
// (SPC-4 6.35): all commands, or one command by opcode (options 001b) or
// by opcode and service action (010b), with timeout descriptors on RCTD.
func cmdReportSupportedOpcodes(tk *task) error {
	cdb := tk.cdb
	rctd := cdb[2]&0x80 != 0
	opts := cdb[2] & 0x07
	reqOp := cdb[3]
	reqSA := be16(cdb[4:6])
	alloc := be32(cdb[6:10])
	ot := tk.t.ops
	lu := tk.lu
	var d []byte
	switch opts {
	case 0: // all commands
		d = make([]byte, 4)
		for _, e := range ot.all {
			if !lu.supports(e) {
				continue
			}
			desc := make([]byte, 8)
			desc[0] = e.opcode
			put16(desc[2:4], e.sa)
			if e.hasSA {
				desc[5] |= 0x01 // SERVACTV
			}
			put16(desc[6:8], uint16(e.cdbLen))
			if rctd {
				desc[5] |= 0x02 // CTDP
				desc = append(desc, timeoutDescriptor(e)...)
			}
			d = append(d, desc...)
		}
		put32(d[0:4], uint32(len(d)-4))
	case 1, 2, 3:
		e, hasSA := ot.find(reqOp, reqSA)
		if opts == 1 && hasSA {
			return errCDBField(2, 2)
		}
		if opts == 2 && !hasSA && ot.plain[reqOp] != nil {
			return errCDBField(2, 2)
		}
		if opts == 1 && reqSA != 0 {
			return errCDBField(4, -1)
		}
		d = make([]byte, 4)
		support := byte(0x01) // not supported
		if e != nil && lu.supports(e) {
			support = 0x03 // supported, conforming to the standard
			d = append(d, e.usage...)
			put16(d[2:4], uint16(len(e.usage)))
		}
		d[1] = support
		if rctd {
			d[1] |= 0x80 // CTDP
			if e != nil && lu.supports(e) {
				d = append(d, timeoutDescriptor(e)...)
			} else {
				d = append(d, make([]byte, 12)...)
			}
		}
	default:
		return errCDBField(2, 2)
	}
	tk.setDataIn(d, int(min(alloc, 1<<20)))
	return nil
}

// timeoutDescriptor is the command timeouts descriptor (SPC-4 6.35.4).
func timeoutDescriptor(e *opEntry) []byte {
	t := make([]byte, 12)
	put16(t[0:2], 10)
	put32(t[4:8], e.timeout)
	put32(t[8:12], e.timeout*2)
	return t
}
