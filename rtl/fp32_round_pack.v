// Round-and-pack stage shared by the FP32 adder and multiplier.
// value = sig / 2**26 * 2**(e - 127); sig[26] is the leading one, sig[2:0] are guard,
// round and sticky. Rounds to nearest even to 24 bits, then applies the exponent range:
// a rounded exponent field >= 255 gives infinity, <= 0 gives a zero of sign s
// (flush-to-zero, tininess after rounding). Combinational.
module fp32_round_pack (
    input  wire               s,    // sign of the result
    input  wire signed [10:0] e,    // biased exponent of sig[26], may be out of range
    input  wire        [26:0] sig,  // normalised significand with guard/round/sticky
    output wire        [31:0] y     // FP32 result
);
    wire        lsb   = sig[3];
    wire        g     = sig[2];
    wire        rs    = |sig[1:0];
    wire [24:0] mant  = {1'b0, sig[26:3]} + {24'd0, g & (rs | lsb)};
    wire        carry = mant[24];
    wire [22:0] frac  = carry ? mant[23:1] : mant[22:0];
    wire signed [10:0] er = e + $signed({10'd0, carry});

    assign y = (er >= 11'sd255) ? {s, 8'hFF, 23'd0} :
               (er <= 11'sd0)   ? {s, 31'd0} :
                                  {s, er[7:0], frac};
endmodule
