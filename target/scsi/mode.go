package scsi

// Mode page codes served by MODE SENSE / MODE SELECT.
const (
	pageRWErrorRecovery = 0x01
	pageCaching         = 0x08
	pageControl         = 0x0a
	pageInfoExceptions  = 0x1c
	pageAll             = 0x3f
)

// Page controls (MODE SENSE PC field).
const (
	pcCurrent    = 0
	pcChangeable = 1
	pcDefault    = 2
	pcSaved      = 3
)

// modePageCodes lists the pages in the order MODE SENSE returns them.
func modePageCodes() []byte {
	return []byte{pageRWErrorRecovery, pageCaching, pageControl, pageInfoExceptions}
}

// saveable says whether mode parameters can be saved (a state file is
// configured).
func (lu *LU) saveable() bool { return lu.statePath != "" }

// modePage returns page code as seen with page control pc, or nil if the
// page is not supported.
func (lu *LU) modePage(code byte, pc byte) []byte {
	var p []byte
	switch code {
	case pageRWErrorRecovery:
		p = make([]byte, 12)
		p[1] = 10
		if pc != pcChangeable {
			p[3] = 0 // read retry count
		}
	case pageCaching:
		p = make([]byte, 20)
		p[1] = 18
		if lu.saveable() {
			p[0] = 0x80 // PS
		}
		var wce bool
		switch pc {
		case pcCurrent:
			wce = lu.wce.Load()
		case pcChangeable:
			wce = true // the WCE bit is changeable
		case pcDefault:
			wce = lu.configuredWCE.Load() // the operator's write_cache, live
		case pcSaved:
			wce = lu.savedWCE.Load()
		}
		if wce {
			p[2] |= 0x04
		}
	case pageControl:
		p = make([]byte, 12)
		p[1] = 10
		const swp = 0x08 // byte 4: software write protect
		if pc != pcChangeable {
			p[2] = 0x02 // GLTSD
			p[3] = 0x10 // queue algorithm modifier 1: unrestricted reordering
			p[8], p[9] = 0xff, 0xff
		}
		switch pc {
		case pcChangeable:
			p[4] = swp
		case pcCurrent:
			if lu.swp.Load() {
				p[4] = swp
			}
		}
	case pageInfoExceptions:
		p = make([]byte, 12)
		p[1] = 10
		if pc != pcChangeable {
			p[2] = 0x08 // DEXCPT: no informational exception reporting
		}
	default:
		return nil
	}
	p[0] |= code
	return p
}

func cmdModeSense(tk *task) error {
	lu := tk.lu
	cdb := tk.cdb
	ten := cdb[0] == 0x5a
	dbd := cdb[1]&0x08 != 0
	llbaa := ten && cdb[1]&0x10 != 0
	pc := cdb[2] >> 6
	code := cdb[2] & 0x3f
	sub := cdb[3]
	var alloc int
	if ten {
		alloc = int(be16(cdb[7:9]))
	} else {
		alloc = int(cdb[4])
	}
	if pc == pcSaved && !lu.saveable() {
		return newSense(SenseIllegalRequest, ASCSavingParametersUnsupported)
	}
	if sub != 0 && sub != 0xff {
		return errCDBField(3, -1)
	}
	var pages []byte
	if code == pageAll {
		for _, c := range modePageCodes() {
			pages = append(pages, lu.modePage(c, pc)...)
		}
	} else {
		// Subpage FFh asks for the page and all its subpages; there are
		// no subpages, so it is the page itself.
		p := lu.modePage(code, pc)
		if p == nil {
			return errCDBField(2, 5)
		}
		pages = p
	}
	var bd []byte
	if !dbd {
		if llbaa {
			bd = make([]byte, 16)
			put64(bd[0:8], lu.blocks())
			put32(bd[12:16], lu.blockSize)
		} else {
			bd = make([]byte, 8)
			put32(bd[0:4], uint32(min(lu.blocks(), 0xffffffff)))
			put32(bd[4:8], lu.blockSize) // byte 4 (density) is 0
		}
	}
	// Device-specific parameter: DPOFUA, and WP while software write
	// protect is on.
	dsp := byte(0x10)
	if lu.swp.Load() {
		dsp |= 0x80
	}
	var d []byte
	if ten {
		d = make([]byte, 8, 8+len(bd)+len(pages))
		d[3] = dsp
		if llbaa {
			d[4] = 0x01
		}
		put16(d[6:8], uint16(len(bd)))
		d = append(append(d, bd...), pages...)
		put16(d[0:2], uint16(len(d)-2))
	} else {
		d = make([]byte, 4, 4+len(bd)+len(pages))
		d[2] = dsp
		d[3] = byte(len(bd))
		d = append(append(d, bd...), pages...)
		if len(d) > 256 {
			d = d[:256]
		}
		d[0] = byte(len(d) - 1)
	}
	tk.setDataIn(d, alloc)
	return nil
}

// modeChanges is what a validated MODE SELECT parameter list sets.
type modeChanges struct {
	setWCE bool
	wce    bool
	setSWP bool
	swp    bool
}

func cmdModeSelect(tk *task) error {
	lu := tk.lu
	cdb := tk.cdb
	ten := cdb[0] == 0x55
	sp := cdb[1]&0x01 != 0
	var plen int
	if ten {
		plen = int(be16(cdb[7:9]))
	} else {
		plen = int(cdb[4])
	}
	tk.xfer = uint32(plen)
	if sp && !lu.saveable() {
		return errCDBField(1, 0)
	}
	if plen == 0 {
		return nil
	}
	if len(tk.cmd.DataOut) < plen {
		return errParamListLength()
	}
	ch, err := lu.parseModeSelect(tk.cmd.DataOut[:plen], ten)
	if err != nil {
		return err
	}
	if ch.setWCE {
		if lu.wce.Load() && !ch.wce {
			// Leaving write-back: what the cache acknowledged so far
			// becomes durable before the cache is off, so that no write
			// treated as FUA-only is acknowledged while earlier writes are
			// still volatile. A failed flush leaves the cache on.
			if err := lu.vol.Flush(tk.volCtx()); err != nil {
				return volumeError(err, ioWrite)
			}
		}
		if was := lu.wce.Swap(ch.wce); was != ch.wce {
			k := tk.nx.key
			lu.raiseAll(ASCModeParametersChanged, &k)
		}
		if sp {
			if err := lu.saveWCE(ch.wce); err != nil {
				lu.log.Error("scsi: saving mode parameters", "lun", lu.lun, "err", err)
				return newSense(SenseHardwareError, ASCInternalTargetFailure)
			}
		}
	}
	if ch.setSWP {
		// Not saved: write protection set by a host lasts until a host
		// clears it or the daemon restarts.
		if was := lu.swp.Swap(ch.swp); was != ch.swp {
			k := tk.nx.key
			lu.raiseAll(ASCModeParametersChanged, &k)
			lu.log.Info("scsi: software write protect changed by a host", "lun", lu.lun, "on", ch.swp)
		}
	}
	return nil
}

// parseModeSelect validates a MODE SELECT parameter list: header, block
// descriptors (which must match the logical unit) and pages (in which only
// changeable bits may differ from the current values).
func (lu *LU) parseModeSelect(p []byte, ten bool) (modeChanges, error) {
	var ch modeChanges
	hdrLen := 4
	if ten {
		hdrLen = 8
	}
	if len(p) < hdrLen {
		return ch, errParamListLength()
	}
	var bdl, bdSize int
	if ten {
		bdl = int(be16(p[6:8]))
		bdSize = 8
		if p[4]&0x01 != 0 {
			bdSize = 16
		}
	} else {
		bdl = int(p[3])
		bdSize = 8
	}
	if bdl%bdSize != 0 {
		return ch, errParamField(hdrLen-1, -1)
	}
	if hdrLen+bdl > len(p) {
		return ch, errParamListLength()
	}
	for off := hdrLen; off < hdrLen+bdl; off += bdSize {
		d := p[off : off+bdSize]
		var blen uint32
		if bdSize == 16 {
			blen = be32(d[12:16])
		} else {
			blen = be24(d[5:8])
		}
		if blen != 0 && blen != lu.blockSize {
			return ch, errParamField(off+bdSize-3, -1)
		}
	}
	for off := hdrLen + bdl; off < len(p); {
		if len(p)-off < 2 {
			return ch, errParamListLength()
		}
		code := p[off] & 0x3f
		if p[off]&0x40 != 0 { // sub-page format: no sub-pages are supported
			return ch, errParamField(off, 6)
		}
		plen := int(p[off+1])
		if off+2+plen > len(p) {
			return ch, errParamListLength()
		}
		cur := lu.modePage(code, pcCurrent)
		if cur == nil {
			return ch, errParamField(off, 5)
		}
		if plen != len(cur)-2 {
			return ch, errParamField(off+1, -1)
		}
		mask := lu.modePage(code, pcChangeable)
		page := p[off : off+2+plen]
		for i := 2; i < len(page); i++ {
			if (page[i]^cur[i])&^mask[i] != 0 {
				return ch, errParamField(off+i, -1)
			}
		}
		switch code {
		case pageCaching:
			ch.setWCE = true
			ch.wce = page[2]&0x04 != 0
		case pageControl:
			ch.setSWP = true
			ch.swp = page[4]&0x08 != 0
		}
		off += 2 + plen
	}
	return ch, nil
}
