// One-iteration pipeline stages shared by the ASIC units. Each stage computes one step of
// an iteration from registered inputs and registers the result, passing along a valid bit
// and an opaque context vector (CW bits) that later stages need.

// Horner step of the exp unit: h_out = h_in * r + c.
module fp32_horner_stage #(
    parameter CW = 1                // context width, bits
) (
    input  wire          clk,
    input  wire          rst_n,     // synchronous, active low: clears v_out
    input  wire          v_in,
    input  wire [31:0]   h_in,      // polynomial value so far
    input  wire [31:0]   r_in,      // reduced argument r
    input  wire [31:0]   c,         // coefficient of this step
    input  wire [CW-1:0] ctx_in,
    output reg           v_out,
    output reg  [31:0]   h_out,
    output reg  [31:0]   r_out,
    output reg  [CW-1:0] ctx_out
);
    wire [31:0] pr, h_n;
    fp32_mul_comb u_mul (.a(h_in), .b(r_in), .y(pr));
    fp32_add_comb u_add (.a(pr), .b(c), .y(h_n));
    always @(posedge clk) begin
        v_out   <= rst_n & v_in;
        h_out   <= h_n;
        r_out   <= r_in;
        ctx_out <= ctx_in;
    end
endmodule

// Newton-Raphson step of the reciprocal unit: y_out = y * (2 - m * y).
module fp32_recip_stage #(
    parameter CW = 1
) (
    input  wire          clk,
    input  wire          rst_n,
    input  wire          v_in,
    input  wire [31:0]   y_in,      // estimate of 1/m
    input  wire [31:0]   m_in,      // significand m in [0.5, 1)
    input  wire [CW-1:0] ctx_in,
    output reg           v_out,
    output reg  [31:0]   y_out,
    output reg  [31:0]   m_out,
    output reg  [CW-1:0] ctx_out
);
    wire [31:0] t, u, y_n;
    fp32_mul_comb m_t (.a(m_in), .b(y_in), .y(t));
    fp32_add_comb a_u (.a(32'h40000000), .b({~t[31], t[30:0]}), .y(u));   // 2 - t
    fp32_mul_comb m_y (.a(y_in), .b(u), .y(y_n));
    always @(posedge clk) begin
        v_out   <= rst_n & v_in;
        y_out   <= y_n;
        m_out   <= m_in;
        ctx_out <= ctx_in;
    end
endmodule

// Newton step of the inverse-square-root unit: y_out = y * (1.5 - ((a * y) * y) * 0.5).
module fp32_rsqrt_stage #(
    parameter CW = 1
) (
    input  wire          clk,
    input  wire          rst_n,
    input  wire          v_in,
    input  wire [31:0]   y_in,      // estimate of 1/sqrt(a)
    input  wire [31:0]   a_in,
    input  wire [CW-1:0] ctx_in,
    output reg           v_out,
    output reg  [31:0]   y_out,
    output reg  [31:0]   a_out,
    output reg  [CW-1:0] ctx_out
);
    wire [31:0] t1, t2, t3, u, y_n;
    fp32_mul_comb m1 (.a(a_in), .b(y_in), .y(t1));
    fp32_mul_comb m2 (.a(t1), .b(y_in), .y(t2));
    fp32_mul_comb m3 (.a(t2), .b(32'h3F000000), .y(t3));                  // * 0.5
    fp32_add_comb a4 (.a(32'h3FC00000), .b({~t3[31], t3[30:0]}), .y(u));  // 1.5 - t3
    fp32_mul_comb m5 (.a(y_in), .b(u), .y(y_n));
    always @(posedge clk) begin
        v_out   <= rst_n & v_in;
        y_out   <= y_n;
        a_out   <= a_in;
        ctx_out <= ctx_in;
    end
endmodule
