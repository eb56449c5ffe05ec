//! A fixed-width encoding for values that serialize as one primitive (an
//! integer, a float, a bool, or a newtype around one): its little-endian
//! bytes, no length, no varint. Map batches use it for their items and
//! results when it applies, so a batch of a million `u64` is a plain array
//! the worker and the parent read without a per-item parser.
//!
//! Whether it applies is found per value, never assumed from the type: a
//! value that serializes as anything else (a struct, a sequence, an enum, a
//! string, or a different primitive than the batch's) is refused, and its
//! caller falls back to postcard. A shareable object (whose descriptor must
//! travel beside the bytes) always serializes as a tuple, so it is refused
//! before its descriptor is touched: the fixed encoding never carries one.
//!
//! The kind of primitive travels with the bytes (a batch's flags, a result
//! record's first byte), so decoding calls the visitor the value was
//! written with: an `f64` is never read back as the bits of a `u64`.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::ser::{self, Impossible, Serialize};

/// Which primitive a fixed-width value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Bool = 1,
    U8 = 2,
    U16 = 3,
    U32 = 4,
    U64 = 5,
    I8 = 6,
    I16 = 7,
    I32 = 8,
    I64 = 9,
    F32 = 10,
    F64 = 11,
}

impl Kind {
    /// The kind named by `tag` (a value of `Kind as u8`).
    #[inline]
    pub(crate) fn from_tag(tag: u8) -> Option<Kind> {
        use Kind::*;
        Some(match tag {
            1 => Bool,
            2 => U8,
            3 => U16,
            4 => U32,
            5 => U64,
            6 => I8,
            7 => I16,
            8 => I32,
            9 => I64,
            10 => F32,
            11 => F64,
            _ => return None,
        })
    }

    /// Bytes of one value.
    #[inline]
    pub(crate) fn width(self) -> usize {
        use Kind::*;
        match self {
            Bool | U8 | I8 => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
        }
    }
}

/// Why a value has no fixed-width encoding (the caller falls back).
#[derive(Debug)]
pub(crate) struct NotFixed;

impl std::fmt::Display for NotFixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a single primitive of the expected kind")
    }
}

impl std::error::Error for NotFixed {}

impl ser::Error for NotFixed {
    fn custom<T: std::fmt::Display>(_: T) -> NotFixed {
        NotFixed
    }
}

impl de::Error for NotFixed {
    fn custom<T: std::fmt::Display>(_: T) -> NotFixed {
        NotFixed
    }
}

/// `value`'s kind and bits (its little-endian bytes as a `u64`, the unused
/// upper bytes zero) if it is one primitive of kind `expected` (any kind
/// when `None`).
#[inline]
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    expected: Option<Kind>,
) -> Result<(Kind, u64), NotFixed> {
    let mut ser = Ser { expected, wrote: None, bits: 0 };
    value.serialize(&mut ser)?;
    Ok((ser.wrote.ok_or(NotFixed)?, ser.bits))
}

/// Append `value`'s fixed-width bytes to `out` (see [`encode`]); its kind.
/// On `Err` nothing was appended.
#[inline]
pub(crate) fn append<T: Serialize + ?Sized>(
    value: &T,
    expected: Option<Kind>,
    out: &mut Vec<u8>,
) -> Result<Kind, NotFixed> {
    let (kind, bits) = encode(value, expected)?;
    let le = bits.to_le_bytes();
    // A constant length per arm: a store or two, not a call into memcpy.
    match kind.width() {
        8 => out.extend_from_slice(&le),
        4 => out.extend_from_slice(&le[..4]),
        2 => out.extend_from_slice(&le[..2]),
        _ => out.push(le[0]),
    }
    Ok(kind)
}

/// Decode a `T` written by [`append`] as kind `kind` from exactly `bytes`.
#[inline]
pub(crate) fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, NotFixed> {
    if bytes.len() != kind.width() {
        return Err(NotFixed);
    }
    let bits = match <[u8; 8]>::try_from(bytes) {
        Ok(eight) => u64::from_le_bytes(eight),
        Err(_) => bytes.iter().rev().fold(0, |bits, &b| (bits << 8) | u64::from(b)),
    };
    decode_bits(kind, bits)
}

/// Decode a `T` from the bits [`encode`] gave for kind `kind`.
#[inline]
pub(crate) fn decode_bits<T: DeserializeOwned>(kind: Kind, bits: u64) -> Result<T, NotFixed> {
    T::deserialize(De { kind, bits })
}

struct Ser {
    expected: Option<Kind>,
    wrote: Option<Kind>,
    bits: u64,
}

impl Ser {
    #[inline]
    fn put(&mut self, kind: Kind, bits: u64) -> Result<(), NotFixed> {
        if self.wrote.is_some() || self.expected.is_some_and(|e| e != kind) {
            return Err(NotFixed);
        }
        self.bits = bits;
        self.wrote = Some(kind);
        Ok(())
    }
}

macro_rules! refuse {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {$(
        fn $name(self, $(_: $arg),*) -> Result<$ret, NotFixed> {
            Err(NotFixed)
        }
    )*};
}

impl ser::Serializer for &mut Ser {
    type Ok = ();
    type Error = NotFixed;
    type SerializeSeq = Impossible<(), NotFixed>;
    type SerializeTuple = Impossible<(), NotFixed>;
    type SerializeTupleStruct = Impossible<(), NotFixed>;
    type SerializeTupleVariant = Impossible<(), NotFixed>;
    type SerializeMap = Impossible<(), NotFixed>;
    type SerializeStruct = Impossible<(), NotFixed>;
    type SerializeStructVariant = Impossible<(), NotFixed>;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), NotFixed> {
        self.put(Kind::Bool, u64::from(v))
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), NotFixed> {
        self.put(Kind::U8, u64::from(v))
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), NotFixed> {
        self.put(Kind::U16, u64::from(v))
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), NotFixed> {
        self.put(Kind::U32, u64::from(v))
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), NotFixed> {
        self.put(Kind::U64, v)
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), NotFixed> {
        self.put(Kind::I8, u64::from(v as u8))
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), NotFixed> {
        self.put(Kind::I16, u64::from(v as u16))
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), NotFixed> {
        self.put(Kind::I32, u64::from(v as u32))
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), NotFixed> {
        self.put(Kind::I64, v as u64)
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), NotFixed> {
        self.put(Kind::F32, u64::from(v.to_bits()))
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), NotFixed> {
        self.put(Kind::F64, v.to_bits())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotFixed> {
        value.serialize(self)
    }

    refuse! {
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), NotFixed> {
        Err(NotFixed)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotFixed> {
        Err(NotFixed)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, _: &T) -> Result<(), NotFixed> {
        Err(NotFixed)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

struct De {
    kind: Kind,
    bits: u64,
}

impl<'de> de::Deserializer<'de> for De {
    type Error = NotFixed;

    #[inline]
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotFixed> {
        match self.kind {
            Kind::Bool => match self.bits {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                _ => Err(NotFixed),
            },
            Kind::U8 => visitor.visit_u8(self.bits as u8),
            Kind::U16 => visitor.visit_u16(self.bits as u16),
            Kind::U32 => visitor.visit_u32(self.bits as u32),
            Kind::U64 => visitor.visit_u64(self.bits),
            Kind::I8 => visitor.visit_i8(self.bits as u8 as i8),
            Kind::I16 => visitor.visit_i16(self.bits as u16 as i16),
            Kind::I32 => visitor.visit_i32(self.bits as u32 as i32),
            Kind::I64 => visitor.visit_i64(self.bits as i64),
            Kind::F32 => visitor.visit_f32(f32::from_bits(self.bits as u32)),
            Kind::F64 => visitor.visit_f64(f64::from_bits(self.bits)),
        }
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, NotFixed> {
        visitor.visit_newtype_struct(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round<T: Serialize + DeserializeOwned>(v: &T) -> Option<(Kind, T)> {
        let mut out = Vec::new();
        let kind = append(v, None, &mut out).ok()?;
        assert_eq!(out.len(), kind.width());
        Some((kind, decode(kind, &out).unwrap()))
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Id(u64);

    #[test]
    fn primitives_and_newtypes_round_trip_and_the_rest_is_refused() {
        assert_eq!(round(&u64::MAX), Some((Kind::U64, u64::MAX)));
        assert_eq!(round(&-5i32), Some((Kind::I32, -5)));
        assert_eq!(round(&1.5f64), Some((Kind::F64, 1.5)));
        assert_eq!(round(&true), Some((Kind::Bool, true)));
        assert_eq!(round(&Id(7)), Some((Kind::U64, Id(7))));
        assert!(round(&(1u8, 2u8)).is_none());
        assert!(round(&Some(1u8)).is_none());
        assert!(round(&"x".to_string()).is_none());
        assert!(round(&vec![1u8]).is_none());
        assert!(round(&'c').is_none());
        assert!(round(&()).is_none());
        // A value of another kind than expected is refused, and leaves nothing behind.
        let mut out = vec![9];
        assert!(append(&1u32, Some(Kind::U64), &mut out).is_err());
        assert_eq!(out, vec![9]);
        // Bytes of the wrong length, or a bool that is neither 0 nor 1, do not decode.
        assert!(decode::<u64>(Kind::U64, &[0; 7]).is_err());
        assert!(decode::<bool>(Kind::Bool, &[2]).is_err());
        // The kind decides the visitor: an f64's bits never become a u64.
        assert!(decode::<u64>(Kind::F64, &1.0f64.to_le_bytes()).is_err());
        assert!(Kind::from_tag(0).is_none() && Kind::from_tag(12).is_none());
        for tag in 1..=11 {
            assert_eq!(Kind::from_tag(tag).unwrap() as u8, tag);
        }
    }
}
