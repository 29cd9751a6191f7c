// BF16 x BF16 -> FP32 multiplier, combinational (one lane of the bank MAC unit).
// The product of two 8-bit significands has at most 16 bits and is exact in FP32: no
// rounding, only the exponent range rules: subnormal BF16 inputs are read as zeros, a
// product below 2**-126 flushes to a zero of the product's sign, one at or above 2**128
// becomes infinity; NaN input or 0 * inf gives the canonical quiet NaN 0x7FC00000.
// Golden model: pimsim.numerics.bf16_mul.
module bf16_mul (
    input  wire [15:0] a,
    input  wire [15:0] b,
    output wire [31:0] y
);
    wire       s  = a[15] ^ b[15];
    wire [7:0] ea = a[14:7], eb = b[14:7];
    wire [6:0] ma = a[6:0], mb = b[6:0];
    wire za = (ea == 8'd0), zb = (eb == 8'd0);
    wire nan_a = (ea == 8'hFF) && (ma != 7'd0);
    wire nan_b = (eb == 8'hFF) && (mb != 7'd0);
    wire inf_a = (ea == 8'hFF) && (ma == 7'd0);
    wire inf_b = (eb == 8'hFF) && (mb == 7'd0);

    wire [15:0] p   = {8'd0, 1'b1, ma} * {8'd0, 1'b1, mb};  // in [2**14, 2**16)
    wire        top = p[15];
    wire signed [10:0] e = $signed({3'b000, ea}) + $signed({3'b000, eb}) - 11'sd127
                           + $signed({10'd0, top});
    wire [22:0] frac = top ? {p[14:0], 8'd0} : {p[13:0], 9'd0};

    assign y = (nan_a || nan_b || (inf_a && zb) || (inf_b && za)) ? 32'h7FC00000 :
               (inf_a || inf_b)  ? {s, 8'hFF, 23'd0} :
               (za || zb)        ? {s, 31'd0} :
               (e >= 11'sd255)   ? {s, 8'hFF, 23'd0} :
               (e <= 11'sd0)     ? {s, 31'd0} :
                                   {s, e[7:0], frac};
endmodule
