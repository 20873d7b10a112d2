//! The few facts the proxy needs out of an X.509 certificate (RFC 5280): its validity window,
//! its DNS names (subjectAltName) and its subject's common name.
//!
//! A small DER walk instead of a full X.509 library: rustls (through webpki) already parses and
//! checks the certificate's structure, signatures are not ours to verify (clients do that), and
//! these three fields sit at fixed places in `TBSCertificate`. Every read is bounds-checked;
//! input that does not have the expected shape is an error, never a panic.

/// What was read out of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertFacts {
    /// notBefore, in seconds since the Unix epoch.
    pub(crate) not_before: i64,
    /// notAfter, in seconds since the Unix epoch.
    pub(crate) not_after: i64,
    /// The subjectAltName's dNSName entries, as written.
    pub(crate) dns_names: Vec<String>,
    /// The subject's first commonName, when it is a string.
    pub(crate) common_name: Option<String>,
}

/// Why a certificate could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`.
const VERSION: u8 = 0xa0;
/// `[1] IMPLICIT issuerUniqueID` and `[2] IMPLICIT subjectUniqueID` (primitive or constructed).
const UNIQUE_IDS: [u8; 4] = [0x81, 0xa1, 0x82, 0xa2];
/// `[3] EXPLICIT Extensions`.
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IA5String` inside GeneralNames.
const DNS_NAME: u8 = 0x82;
/// 2.5.29.17, id-ce-subjectAltName.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.4.3, id-at-commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// A cursor over DER bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one TLV: its tag and its contents.
    fn any(&mut self) -> Result<(u8, &'a [u8]), Malformed> {
        let bad = Malformed("a DER length is malformed or runs past the end");
        let (&tag, after_tag) = self.rest.split_first().ok_or(bad)?;
        if tag & 0x1f == 0x1f {
            return Err(Malformed("high-tag-number DER tags are not used in certificates"));
        }
        let (&first, mut after_len) = after_tag.split_first().ok_or(bad)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            // 0x80 is BER's indefinite length, which DER forbids; more than 4 bytes of length
            // would describe a certificate larger than anything rustls accepts.
            if count == 0 || count > 4 {
                return Err(bad);
            }
            let (len_bytes, after) = after_len.split_at_checked(count).ok_or(bad)?;
            after_len = after;
            len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (contents, rest) = after_len.split_at_checked(len).ok_or(bad)?;
        self.rest = rest;
        Ok((tag, contents))
    }

    /// Reads one TLV that must have `tag`.
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], Malformed> {
        match self.any()? {
            (found, contents) if found == tag => Ok(contents),
            _ => Err(Malformed(what)),
        }
    }

    /// Reads one TLV if it has `tag`.
    fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, Malformed> {
        if self.peek_tag() == Some(tag) {
            self.any().map(|(_, contents)| Some(contents))
        } else {
            Ok(None)
        }
    }
}

/// Reads validity, SAN DNS names and the subject's CN out of a DER certificate.
pub(crate) fn cert_facts(der: &[u8]) -> Result<CertFacts, Malformed> {
    let mut outer = Reader::new(der);
    let certificate = outer.expect(SEQUENCE, "a certificate is a DER SEQUENCE")?;
    let mut certificate = Reader::new(certificate);
    let tbs = certificate.expect(SEQUENCE, "a certificate starts with its TBSCertificate")?;
    let mut tbs = Reader::new(tbs);
    tbs.optional(VERSION)?;
    tbs.expect(INTEGER, "the serial number is missing")?;
    tbs.expect(SEQUENCE, "the signature algorithm is missing")?;
    tbs.expect(SEQUENCE, "the issuer is missing")?;
    let validity = tbs.expect(SEQUENCE, "the validity is missing")?;
    let mut validity = Reader::new(validity);
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    let subject = tbs.expect(SEQUENCE, "the subject is missing")?;
    tbs.expect(SEQUENCE, "the subject public key is missing")?;
    for tag in UNIQUE_IDS {
        tbs.optional(tag)?;
    }
    let mut dns_names = Vec::new();
    if let Some(extensions) = tbs.optional(EXTENSIONS)? {
        let mut explicit = Reader::new(extensions);
        let list = explicit.expect(SEQUENCE, "extensions are a SEQUENCE")?;
        let mut list = Reader::new(list);
        while !list.is_empty() {
            let extension = list.expect(SEQUENCE, "an extension is a SEQUENCE")?;
            let mut extension = Reader::new(extension);
            let oid = extension.expect(OID, "an extension starts with its OID")?;
            extension.optional(BOOLEAN)?;
            let value =
                extension.expect(OCTET_STRING, "an extension's value is an OCTET STRING")?;
            if oid == OID_SUBJECT_ALT_NAME {
                dns_names.extend(san_dns_names(value)?);
            }
        }
    }
    Ok(CertFacts { not_before, not_after, dns_names, common_name: common_name(subject)? })
}

/// The dNSName entries of a subjectAltName value (`GeneralNames`).
fn san_dns_names(value: &[u8]) -> Result<Vec<String>, Malformed> {
    let mut outer = Reader::new(value);
    let names = outer.expect(SEQUENCE, "subjectAltName is a SEQUENCE")?;
    let mut names = Reader::new(names);
    let mut found = Vec::new();
    while !names.is_empty() {
        let (tag, contents) = names.any()?;
        if tag == DNS_NAME {
            // IA5String: ASCII. Anything else is not a name a client could send in SNI.
            if let Ok(name) = std::str::from_utf8(contents) {
                if name.is_ascii() {
                    found.push(name.to_owned());
                }
            }
        }
    }
    Ok(found)
}

/// The first commonName of a `Name` (RDNSequence), if it is a string.
fn common_name(subject: &[u8]) -> Result<Option<String>, Malformed> {
    let mut rdns = Reader::new(subject);
    while !rdns.is_empty() {
        let set = rdns.expect(SET, "a relative distinguished name is a SET")?;
        let mut set = Reader::new(set);
        while !set.is_empty() {
            let attribute = set.expect(SEQUENCE, "a name attribute is a SEQUENCE")?;
            let mut attribute = Reader::new(attribute);
            let oid = attribute.expect(OID, "a name attribute starts with its OID")?;
            let (_string_type, value) = attribute.any()?;
            if oid == OID_COMMON_NAME {
                return Ok(std::str::from_utf8(value).ok().map(str::to_owned));
            }
        }
    }
    Ok(None)
}

/// Reads a UTCTime or GeneralizedTime in DER's form (`...Z`, with seconds) as Unix seconds.
fn time(reader: &mut Reader<'_>) -> Result<i64, Malformed> {
    let bad = Malformed("a validity time is not in DER's YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ form");
    let (tag, text) = reader.any()?;
    let digits = |range: std::ops::Range<usize>| -> Result<i64, Malformed> {
        let part = text.get(range).ok_or(bad)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        Ok(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let (year, rest_at) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            // RFC 5280 4.1.2.5.1: YY >= 50 is 19YY, else 20YY.
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 15) => (digits(0..4)?, 4),
        _ => return Err(bad),
    };
    if text.last() != Some(&b'Z') {
        return Err(bad);
    }
    let month = digits(rest_at..rest_at + 2)?;
    let day = digits(rest_at + 2..rest_at + 4)?;
    let hour = digits(rest_at + 4..rest_at + 6)?;
    let minute = digits(rest_at + 6..rest_at + 8)?;
    let second = digits(rest_at + 8..rest_at + 10)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a count of days since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Unix seconds as RFC 3339 UTC, e.g. `2030-01-31T12:00:00Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    let (year, month, day) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_both_ways() {
        for (date, unix) in [
            ((1970, 1, 1), 0),
            ((2000, 2, 29), 951_782_400),
            ((2038, 1, 19), 2_147_472_000),
            ((1950, 1, 1), -631_152_000),
        ] {
            assert_eq!(days_from_civil(date.0, date.1, date.2) * 86_400, unix, "{date:?}");
            assert_eq!(civil_from_days(unix / 86_400), date, "{unix}");
        }
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn times_read_both_encodings_and_refuse_others() {
        let read = |tag: u8, text: &str| {
            let mut der = vec![tag, u8::try_from(text.len()).expect("short")];
            der.extend_from_slice(text.as_bytes());
            time(&mut Reader::new(&der))
        };
        assert_eq!(read(UTC_TIME, "000229010101Z"), Ok(951_782_400 + 3661));
        assert_eq!(read(UTC_TIME, "500101000000Z"), Ok(-631_152_000));
        assert_eq!(read(GENERALIZED_TIME, "20000229010101Z"), Ok(951_782_400 + 3661));
        for (tag, text) in [
            (UTC_TIME, "0002290101Z"),
            (UTC_TIME, "000229010101+"),
            (UTC_TIME, "001329010101Z"),
            (GENERALIZED_TIME, "2000022901010Z"),
            (OCTET_STRING, "000229010101Z"),
        ] {
            assert!(read(tag, text).is_err(), "{text}");
        }
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_not_a_panic() {
        for bad in [&[][..], &[0x30], &[0x30, 0x85, 1, 2, 3, 4, 5], &[0x30, 0x80], &[0x30, 0x05, 1]]
        {
            assert!(cert_facts(bad).is_err(), "{bad:?}");
        }
    }
}
